"""What a model entry is: its kind, where its weights come from, which tasks judge it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

# Re-exported: ModelUnavailable lived here, and tasks/ and user sources still import it from here.
from compresslab.errors import ModelUnavailable  # noqa: F401

ModelKind = Literal["classifier", "causal-lm"]

# A baseline artifact keeps its tokenizer and build records in sub-directories, apart from the
# model files whose bytes are the artifact's size (see trackers/size.py).
TOKENIZER_DIR = "tokenizer"
RECORDS_DIR = "records"


class BaseSource(Protocol):
    """Builds the uncompressed baseline checkpoint (save_pretrained layout) into a directory."""

    def fingerprint(self) -> dict[str, Any]: ...

    def check_available(self) -> None:
        """Raise ModelUnavailable quickly (never hang) when the source cannot be used here."""

    def build(self, out: Path) -> None: ...


@dataclass(frozen=True)
class ModelSpec:
    id: str
    kind: ModelKind
    source: BaseSource
    tasks: tuple[str, ...]
    description: str
    latency_seq_len: int = 64

    def __post_init__(self) -> None:
        if self.kind not in ("classifier", "causal-lm"):
            raise ValueError(f"model {self.id!r}: kind must be 'classifier' or 'causal-lm', got {self.kind!r}")
        if not self.tasks:
            raise ValueError(f"model {self.id!r} needs at least one task")
