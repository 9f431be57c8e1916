"""Baselines from a hub id or a local directory (the users' real targets)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compresslab.errors import ModelUnavailable
from compresslab.models.checkpoint import copy_as_baseline, directory_fingerprint
from compresslab.models.spec import ModelKind


def override_env(model_id: str) -> str:
    """Environment variable that points a registry model at a local checkpoint directory."""
    return "COMPRESSLAB_MODEL_PATH_" + model_id.upper().replace("-", "_").replace(".", "_")


@dataclass(frozen=True)
class HubModel:
    model_id: str
    repo_id: str
    kind: ModelKind
    revision: str = "main"
    problem_type: str | None = None  # see checkpoint.copy_as_baseline

    def local_path(self) -> Path | None:
        value = os.environ.get(override_env(self.model_id))
        return Path(value).expanduser() if value else None

    def check_available(self) -> None:
        local = self.local_path()
        if local is not None:
            if not (local / "config.json").is_file():
                raise ModelUnavailable(f"{override_env(self.model_id)}={local} has no config.json")
            return
        self._resolve_snapshot()

    def _resolve_snapshot(self) -> Path:
        import huggingface_hub

        try:
            return Path(huggingface_hub.snapshot_download(self.repo_id, revision=self.revision, local_files_only=True))
        except Exception:  # noqa: BLE001 - any cache miss just means "try the network"
            pass
        try:
            # A metadata call with a short timeout: offline machines answer at once, never hang.
            huggingface_hub.model_info(self.repo_id, revision=self.revision, timeout=10)
        except Exception as err:  # noqa: BLE001 - connection, auth and not-found errors all mean unavailable
            raise ModelUnavailable(
                f"{self.repo_id} is not in the local Hugging Face cache and the hub is unreachable "
                f"({type(err).__name__}); set {override_env(self.model_id)}=/path/to/checkpoint"
            ) from None
        return Path(huggingface_hub.snapshot_download(self.repo_id, revision=self.revision))

    def fingerprint(self) -> dict[str, Any]:
        local = self.local_path()
        if local is not None:
            return {**directory_fingerprint(local), "problem_type": self.problem_type}
        return {"source": "hub", "repo": self.repo_id, "revision": self.revision, "problem_type": self.problem_type}

    def build(self, out: Path) -> None:
        copy_as_baseline(self.local_path() or self._resolve_snapshot(), self.kind, out, self.problem_type)
