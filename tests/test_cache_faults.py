"""Bad input and faults around the artifact cache: unusable dirs, racing repairs, a full disk."""

import errno
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Module attributes, not names: on a cache.py without them each test fails on its own.
from compresslab import cache

HINT = ("point COMPRESSLAB_CACHE_DIR, --compresslab-cache-dir (pytest) or --cache-dir (compresslab build) "
        "at a writable directory")


def run_child(script: str, *args: object) -> subprocess.Popen:
    # A bare interpreter that imports only compresslab.cache starts in ~0.1 s (no torch).
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def write_weights(content: bytes):
    def build(out: Path) -> None:
        (out / "weights.bin").write_bytes(content)
    return build


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


# --- 2. two processes meet one corrupt entry ----------------------------------------------------

RACER = r"""
import hashlib, json, os, sys, time
from pathlib import Path
from compresslab import cache

root, counter, go, meet, source = map(Path, sys.argv[1:6])
real_sha256 = cache.sha256_file
met = []


def sha256_then_meet(path):
    # Rendezvous after the first checksum: both processes have judged the entry before either
    # acts on it, the widest window two xdist workers can hit, every run instead of sometimes.
    digest = real_sha256(path)
    if not met:
        met.append(True)
        (meet / str(os.getpid())).touch()
        deadline = time.monotonic() + 10
        while len(list(meet.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.002)
    return digest


def build(out):
    with open(counter, "a") as handle:
        handle.write(f"{os.getpid()}\n")
    (out / "weights.bin").write_bytes(source.read_bytes())


cache.sha256_file = sha256_then_meet
while not go.exists():
    time.sleep(0.002)
entry, built = cache.ArtifactCache(root).get_or_build("shared", build)
cache.sha256_file = real_sha256
cache.ArtifactCache(root).lookup("shared")  # a fresh instance verifies what was returned
digest = hashlib.sha256((entry.payload / "weights.bin").read_bytes()).hexdigest()
print(json.dumps({"built": built, "sha256": digest}))
"""


def test_two_processes_repair_a_corrupt_entry_once(tmp_path):
    root, counter, go, meet = tmp_path / "c", tmp_path / "count.txt", tmp_path / "go", tmp_path / "meet"
    meet.mkdir()
    content = bytes(range(256)) * 256
    source = tmp_path / "weights.bin"
    source.write_bytes(content)
    cache.ArtifactCache(root).get_or_build("shared", write_weights(content))
    weights = root / "shared" / "payload" / "weights.bin"
    damaged = bytearray(weights.read_bytes())
    damaged[-1] ^= 0x01  # one flipped bit, same size: only the checksum can tell
    weights.write_bytes(bytes(damaged))

    racers = [run_child(RACER, root, counter, go, meet, source) for _ in range(2)]
    go.touch()
    results = [racer.communicate(timeout=30) for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0], [err for _, err in results]
    reports = [json.loads(out) for out, _ in results]
    assert {r["sha256"] for r in reports} == {hashlib.sha256(content).hexdigest()}
    assert sorted(r["built"] for r in reports) == [False, True]
    assert len(counter.read_text().splitlines()) == 1
    assert len(list((root / ".corrupt").iterdir())) == 1


def test_an_entry_already_moved_aside_is_rebuilt_not_an_error(tmp_path, caplog):
    # The lock holder finds the damaged entry gone (moved by hand, or by an older compresslab).
    cache.ArtifactCache(tmp_path)._quarantine("gone", "cache entry gone: weights.bin fails its checksum")
    assert "rebuilding gone" in caplog.text


def test_a_republished_entry_is_verified_again(tmp_path):
    reader = cache.ArtifactCache(tmp_path)
    reader.get_or_build("k", write_weights(b"one"))
    # Another process rebuilds the key, then its new payload is damaged on disk.
    cache.ArtifactCache(tmp_path).get_or_build("k", write_weights(b"two"), rebuild=True)
    (tmp_path / "k" / "payload" / "weights.bin").write_bytes(b"tw0")
    with pytest.raises(cache.CorruptEntry):
        reader.lookup("k")


# --- 3. a full disk while saving ----------------------------------------------------------------

DISK_FULL = r"""
import json, resource, signal, sys
from pathlib import Path
from compresslab import cache

root, limit = Path(sys.argv[1]), int(sys.argv[2])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills us instead of failing write()
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def build(out):
    (out / "weights.bin").write_bytes(b"w" * (4 * limit))


try:
    cache.ArtifactCache(root).get_or_build("big", build)
except Exception as err:
    cause = err.__cause__
    print(json.dumps({"type": type(err).__name__, "message": str(err),
                      "cause_errno": getattr(cause, "errno", None)}))
"""


def test_a_full_disk_fails_in_one_line_and_leaves_nothing(tmp_path):
    root, limit = tmp_path / "c", 64 * 1024
    out, err = run_child(DISK_FULL, root, limit).communicate(timeout=30)
    assert out, err  # the child printed its report rather than dying
    report = json.loads(out)
    assert report["type"] == "CacheError" and report["cause_errno"] == errno.EFBIG
    assert report["message"].startswith("building big: could not write the artifact (File too large: ")
    assert "\n" not in report["message"]
    assert not (root / "big").exists() and list((root / ".tmp").iterdir()) == []
    entry, built = cache.ArtifactCache(root).get_or_build("big", write_weights(b"w" * (4 * limit)))
    assert built and (entry.payload / "weights.bin").stat().st_size == 4 * limit


def test_other_build_errors_propagate_unchanged(tmp_path):
    def missing_input(out: Path) -> None:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "model.safetensors")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        cache.ArtifactCache(tmp_path).get_or_build("k", missing_input)
    assert list((tmp_path / ".tmp").iterdir()) == []
