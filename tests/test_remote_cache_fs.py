"""The remote artifact cache (remote_cache.py) on a filesystem path (a shared mount) and the checks
of its URL (test_remote_cache.py: the same against a real S3-compatible server;
test_remote_cache_plugin.py: the plugin's option)."""

import importlib.util
import json
import threading
import time
from pathlib import Path

import pytest

from compresslab import remote_cache
from compresslab.cache import ArtifactCache
from compresslab.remote_cache import RemoteCache

WARNINGS = "compresslab.remote_cache"


def store(url: str):
    import fsspec

    return fsspec.core.url_to_fs(url, skip_instance_cache=True, use_listings_cache=False)


def write_weights(content: bytes, calls: list | None = None):
    def build(out: Path) -> None:
        if calls is not None:
            calls.append(content)
        (out / "weights.bin").write_bytes(content)
        (out / "sub").mkdir()
        (out / "sub" / "config.json").write_text("{}")
    return build


def never_build(out: Path) -> None:
    raise AssertionError("the builder was called although the remote cache holds the entry")


def remote_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == WARNINGS and r.levelname == "WARNING"]


def fill_then_fetch(url: str, tmp_path: Path) -> None:
    calls = []
    first, built = ArtifactCache(tmp_path / "a", remote=RemoteCache(url)).get_or_build(
        "k1", write_weights(b"weights", calls), inputs={"x": 1})
    assert built and calls == [b"weights"]
    fs, root = store(url)
    assert json.loads(fs.cat_file(f"{root}/k1/manifest.json")) == first.manifest
    assert fs.cat_file(f"{root}/k1/payload/weights.bin") == b"weights"
    assert not fs.find(f"{root}/.tmp") and not fs.find(f"{root}/.leases")  # the upload's temporaries are gone

    second, built = ArtifactCache(tmp_path / "b", remote=RemoteCache(url)).get_or_build("k1", never_build)
    assert not built and second.path == tmp_path / "b" / "k1"
    assert (second.payload / "weights.bin").read_bytes() == b"weights"
    assert second.manifest == first.manifest  # the build's own record (build_s, inputs) travels with it
    ArtifactCache(tmp_path / "b").lookup("k1")  # a whole local entry: verified by a fresh local cache
    assert list((tmp_path / "b" / ".tmp").iterdir()) == []


def racing_machines(url: str, tmp_path: Path) -> list[tuple[bool, bytes]]:
    """Two machines (own local caches, own remote clients) ask for one key at once."""
    builds, go, results = [], threading.Barrier(2), []

    def slow_build(out: Path) -> None:
        builds.append(out)
        time.sleep(1.0)
        (out / "weights.bin").write_bytes(b"shared")

    def machine(name: str) -> None:
        cache = ArtifactCache(tmp_path / name, remote=RemoteCache(url, lease_stale_s=30.0, poll_s=0.1))
        go.wait()
        entry, built = cache.get_or_build("k1", slow_build)
        results.append((built, (entry.payload / "weights.bin").read_bytes()))

    threads = [threading.Thread(target=machine, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(builds) == 1, builds
    return results


@pytest.mark.parametrize("form", ["path", "file-url"])
def test_a_filesystem_path_is_a_remote_cache_too(tmp_path, form, caplog):
    shared = tmp_path / "shared"
    fill_then_fetch(str(shared) if form == "path" else f"file://{shared}", tmp_path)
    assert remote_warnings(caplog) == []


def test_one_build_per_key_across_machines_on_a_shared_path(tmp_path):
    assert sorted(racing_machines(str(tmp_path / "shared"), tmp_path)) == [(False, b"shared"), (True, b"shared")]


@pytest.mark.parametrize("url, expected", [
    ("ftp://host/dir", "unknown scheme ftp://; valid: s3://BUCKET[/PREFIX], gs://BUCKET[/PREFIX]"),
    ("s3://", "names no bucket or path"),
    ("gs://bucket/x", "the gs:// backend needs the gcsfs package (pip install gcsfs)"),
    ("az://container/x", "the az:// backend needs the adlfs package (pip install adlfs)"),
])
def test_a_bad_url_is_one_line(url, expected):
    package = expected.split("the ")[-1].split()[0] if "package" in expected else None
    if package and importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed here")
    with pytest.raises(remote_cache.RemoteCacheError) as info:
        remote_cache.check_url(url)
    assert str(info.value).startswith(f"remote cache {url!r}: {expected}")
    assert "\n" not in str(info.value)


def test_good_urls_pass_the_check(tmp_path):
    for url in ("s3://bucket", "s3://bucket/deep/prefix", str(tmp_path), f"file://{tmp_path}", "relative/dir"):
        remote_cache.check_url(url)


@pytest.mark.parametrize("lie", ["a file outside the entry", "another key", "no files"])
def test_a_manifest_that_does_not_describe_its_entry_is_rejected_and_replaced(tmp_path, caplog, lie):
    shared = tmp_path / "shared"
    ArtifactCache(tmp_path / "a", remote=RemoteCache(str(shared))).get_or_build("k1", write_weights(b"w"))
    manifest_file = shared / "k1" / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    if lie == "a file outside the entry":
        manifest["files"]["../../escaped.bin"] = manifest["files"].pop("weights.bin")
    elif lie == "another key":
        manifest["key"] = "k2"
    else:
        manifest["files"] = {}
    manifest_file.write_text(json.dumps(manifest))
    calls = []
    _, built = ArtifactCache(tmp_path / "b", remote=RemoteCache(str(shared))).get_or_build(
        "k1", write_weights(b"w", calls))
    assert built and calls == [b"w"] and not list(tmp_path.rglob("escaped.bin"))
    warning, = remote_warnings(caplog)
    assert "remote cache entry k1: manifest does not describe this entry; rejected it" in warning
    _, built = ArtifactCache(tmp_path / "c", remote=RemoteCache(str(shared))).get_or_build("k1", never_build)
    assert not built  # replaced on the shared path: the third machine fetches it


def test_a_local_hit_the_remote_lacks_is_uploaded_once(tmp_path, caplog):
    # built before the remote was configured: the next run with the remote shares it, building nothing
    ArtifactCache(tmp_path / "a").get_or_build("k1", write_weights(b"w"))
    shared = tmp_path / "shared"
    remote = RemoteCache(str(shared))
    cache = ArtifactCache(tmp_path / "a", remote=remote)
    for _ in range(2):
        _, built = cache.get_or_build("k1", never_build)
        assert not built
    assert json.loads((shared / "k1" / "manifest.json").read_text())["key"] == "k1"
    (shared / "k1" / "manifest.json").unlink()
    cache.get_or_build("k1", never_build)
    assert not (shared / "k1" / "manifest.json").exists()  # looked up once per key per process
    _, built = ArtifactCache(tmp_path / "b", remote=RemoteCache(str(shared))).get_or_build("k1", write_weights(b"w"))
    assert built  # the manifest is gone: no entry, whatever payload is left
    assert remote_warnings(caplog) == []


def test_a_local_hit_is_not_uploaded_while_another_machine_holds_the_key(tmp_path):
    from filelock import FileLock

    ArtifactCache(tmp_path / "a").get_or_build("k1", write_weights(b"w"))
    shared = tmp_path / "shared"
    (shared / ".locks").mkdir(parents=True)
    with FileLock(str(shared / ".locks" / "k1.lock")):  # another machine building k1 (another process's lock)
        done = []
        sharer = threading.Thread(target=lambda: done.append(ArtifactCache(
            tmp_path / "a", remote=RemoteCache(str(shared))).get_or_build("k1", never_build)))
        sharer.start()
        sharer.join(10)
        assert done and not done[0][1]  # returned at once, without waiting for the holder
    assert not (shared / "k1").exists()


FETCH_ON_A_FULL_DISK = r"""
import json, resource, signal, sys
from pathlib import Path
from compresslab.cache import ArtifactCache
from compresslab.remote_cache import RemoteCache

local, shared, limit = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills us instead of failing write()
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    ArtifactCache(local, remote=RemoteCache(shared)).get_or_build("big", None)
except Exception as err:
    print(json.dumps({"type": type(err).__name__, "message": str(err)}))
"""


def test_a_full_local_disk_while_fetching_is_the_caches_one_line_not_a_dead_store(tmp_path):
    import subprocess
    import sys

    shared, limit = tmp_path / "shared", 64 * 1024
    ArtifactCache(tmp_path / "a", remote=RemoteCache(str(shared))).get_or_build(
        "big", lambda out: (out / "weights.bin").write_bytes(b"w" * (4 * limit)))
    child = subprocess.run([sys.executable, "-c", FETCH_ON_A_FULL_DISK, str(tmp_path / "b"), str(shared), str(limit)],
                           capture_output=True, text=True, timeout=60)
    assert child.stdout, child.stderr
    report = json.loads(child.stdout)
    assert report["type"] == "CacheError" and "\n" not in report["message"]
    assert report["message"].startswith("fetching big: could not write the artifact (File too large: ")
    assert not (tmp_path / "b" / "big").exists() and list((tmp_path / "b" / ".tmp").iterdir()) == []


def test_without_a_lease_a_later_upload_leaves_the_published_entry(tmp_path):
    # the race of a store without leases (gs://, az://): two machines built the key; the later upload
    # finds a manifest and leaves that entry whole rather than mixing the two builds
    shared = tmp_path / "shared"
    ArtifactCache(tmp_path / "a", remote=RemoteCache(str(shared))).get_or_build("k1", write_weights(b"first"))
    late = RemoteCache(str(shared))
    late.scheme = "gs"  # no lease taken, as on gs:// and az://
    ArtifactCache(tmp_path / "b").get_or_build("k1", write_weights(b"second"))
    late._store()
    late._write_back(ArtifactCache(tmp_path / "b").lookup("k1"), replace=False)
    entry, built = ArtifactCache(tmp_path / "c", remote=RemoteCache(str(shared))).get_or_build("k1", never_build)
    assert not built and (entry.payload / "weights.bin").read_bytes() == b"first"
