"""Bad input and faults around the artifact cache: unusable dirs, racing repairs, a full disk."""

import errno
import os
from pathlib import Path

import pytest

# Module attributes, not names: on a cache.py without them each test fails on its own.
from compresslab import cache

HINT = "set --compresslab-cache-dir or COMPRESSLAB_CACHE_DIR to a writable directory"


# --- 1. an unusable cache dir is one line -------------------------------------------------------

def test_check_usable_creates_a_missing_dir(tmp_path):
    root = tmp_path / "a" / "b"
    cache.check_usable(root)
    assert root.is_dir() and list(root.iterdir()) == []  # the write probe is gone


@pytest.mark.parametrize("blocked", ["the dir itself", "a parent"])
def test_check_usable_names_a_regular_file_in_the_way(tmp_path, blocked):
    file = tmp_path / "file"
    file.write_text("not a dir")
    root = file if blocked == "the dir itself" else file / "cache"
    with pytest.raises(cache.CacheError) as info:
        cache.check_usable(root)
    message = str(info.value)
    assert isinstance(info.value, ValueError) and "\n" not in message
    assert message.startswith(f"cache dir {root}: ") and "is a regular file, not a directory" in message
    assert str(file) in message and HINT in message


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes into a 0o500 dir; test_check_usable_reports_a_failed_write_probe covers it")
def test_check_usable_rejects_a_read_only_dir(tmp_path):
    root = tmp_path / "ro"
    root.mkdir(mode=0o500)
    try:
        with pytest.raises(cache.CacheError, match=r"not writable \(Permission denied\)"):
            cache.check_usable(root)
    finally:
        root.chmod(0o700)


def test_check_usable_reports_a_failed_write_probe(tmp_path, monkeypatch):
    # Root-proof stand-in for a read-only dir: the probe's write is refused.
    def refuse(root: Path) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(root / ".probe"))
    monkeypatch.setattr(cache, "_probe_write", refuse)
    with pytest.raises(cache.CacheError) as info:
        cache.check_usable(tmp_path)
    assert str(info.value) == f"cache dir {tmp_path}: not writable (Permission denied) ({HINT})"
    assert isinstance(info.value.__cause__, PermissionError)
