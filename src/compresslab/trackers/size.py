"""Size of a serialized artifact: real bytes on disk, zstd bytes, bits per parameter."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import zstandard

from compresslab.models.spec import RECORDS_DIR, TOKENIZER_DIR

ZSTD_LEVEL = 3


@dataclass(frozen=True)
class SizeStats:
    size_bytes: int
    size_zstd_bytes: int
    n_files: int

    def bits_per_param(self, n_params: int) -> float:
        if n_params <= 0:
            raise ValueError(f"parameter count must be positive, got {n_params}")
        return 8 * self.size_bytes / n_params



def zstd_size(path: Path, level: int = ZSTD_LEVEL) -> int:
    """Compressed size of one file, streamed so large checkpoints never sit in memory twice."""
    compressor = zstandard.ZstdCompressor(level=level, threads=-1)
    total = 0
    with open(path, "rb") as source:
        reader = compressor.stream_reader(source, size=path.stat().st_size)
        while chunk := reader.read(1 << 22):
            total += len(chunk)
    return total


# Sub-directories of an artifact that ship beside the model but are not the compressed model:
# the tokenizer (identical for every method) and build records.
NOT_MODEL_DIRS = (TOKENIZER_DIR, RECORDS_DIR)


def model_files(root: Path) -> list[Path]:
    root = Path(root)
    return sorted(p for p in root.rglob("*")
                  if p.is_file() and p.relative_to(root).parts[0] not in NOT_MODEL_DIRS)


def measure_dir(root: Path) -> SizeStats:
    """Bytes of the model files of an artifact (everything but NOT_MODEL_DIRS)."""
    files = model_files(root)
    if not files:
        raise FileNotFoundError(f"no files to measure under {root}")
    raw = sum(p.stat().st_size for p in files)
    return SizeStats(size_bytes=raw, size_zstd_bytes=sum(zstd_size(p) for p in files), n_files=len(files))
