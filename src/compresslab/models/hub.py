"""Baselines from a hub id or a local directory (the users' real targets)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compresslab.errors import ModelUnavailable
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
            files = sorted((p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in local.iterdir() if p.is_file())
            return {"source": "local", "path": str(local), "files": files}
        return {"source": "hub", "repo": self.repo_id, "revision": self.revision}

    def build(self, out: Path) -> None:
        from compresslab.models.loading import load_pretrained, load_tokenizer, save_tokenizer

        path = self.local_path() or self._resolve_snapshot()
        load_pretrained(path, self.kind, dtype="float32").save_pretrained(out)
        save_tokenizer(load_tokenizer(path), out)
