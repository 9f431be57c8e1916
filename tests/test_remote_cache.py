"""The remote artifact cache (remote_cache.py) against a real S3-compatible server on localhost
(moto's server mode, started here): read-through without a build, write-back with the manifest
last, a corrupt remote entry, an unreachable store, one build per key (test_remote_cache_fs.py: a
filesystem path, the URL checks and the plugin's options)."""

import logging
import socket
import threading
import time
import uuid

import pytest

from compresslab.cache import ArtifactCache
from compresslab.remote_cache import RemoteCache
from test_remote_cache_fs import fill_then_fetch, never_build, racing_machines, remote_warnings, store, write_weights

s3fs = pytest.importorskip("s3fs", reason="requirements/test.txt: s3fs and moto[server]")
moto_server = pytest.importorskip("moto.server", reason="requirements/test.txt: moto[server]")

@pytest.fixture(scope="module")
def s3_endpoint():
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def s3_environment(monkeypatch, tmp_path, endpoint: str) -> None:
    """The store's usual environment, and nothing of the user's own AWS setup."""
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": endpoint,
                        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
                        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials")}.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def s3_url(s3_endpoint, monkeypatch, tmp_path):
    s3_environment(monkeypatch, tmp_path, s3_endpoint)
    bucket = f"cache-{uuid.uuid4().hex[:10]}"
    s3fs.S3FileSystem(skip_instance_cache=True).mkdir(bucket)
    return f"s3://{bucket}/compresslab"


def test_a_second_machine_fetches_from_s3_without_building(s3_url, tmp_path, caplog):
    fill_then_fetch(s3_url, tmp_path)
    assert remote_warnings(caplog) == []


def damage(url: str, how: str) -> None:
    fs, root = store(url)
    if how == "same-size-edit":  # only the checksum can tell
        fs.pipe_file(f"{root}/k1/payload/weights.bin", b"weighTs")
    elif how == "missing-file":
        fs.rm_file(f"{root}/k1/payload/sub/config.json")
    else:
        fs.pipe_file(f"{root}/k1/manifest.json", b"{not json")


@pytest.mark.parametrize("how", ["same-size-edit", "missing-file", "bad-manifest"])
def test_a_corrupt_remote_entry_is_rejected_rebuilt_and_replaced(s3_url, tmp_path, how, caplog):
    ArtifactCache(tmp_path / "a", remote=RemoteCache(s3_url)).get_or_build("k1", write_weights(b"weights"))
    damage(s3_url, how)
    calls = []
    entry, built = ArtifactCache(tmp_path / "b", remote=RemoteCache(s3_url)).get_or_build(
        "k1", write_weights(b"weights", calls))
    assert built and calls == [b"weights"] and (entry.payload / "weights.bin").read_bytes() == b"weights"
    warning, = remote_warnings(caplog)
    assert "k1" in warning and "rejected it, rebuilding k1 here and replacing it remotely" in warning
    # replaced remotely: a third machine fetches the good entry
    third, built = ArtifactCache(tmp_path / "c", remote=RemoteCache(s3_url)).get_or_build("k1", never_build)
    assert not built and (third.payload / "weights.bin").read_bytes() == b"weights"
    assert len(remote_warnings(caplog)) == 1


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the socket is: connection refused


def test_an_unreachable_store_is_one_warning_and_a_local_only_run(monkeypatch, tmp_path, caplog):
    s3_environment(monkeypatch, tmp_path, f"http://127.0.0.1:{closed_port()}")
    cache = ArtifactCache(tmp_path / "a", remote=RemoteCache("s3://bucket/prefix"))
    calls = []
    for key in ("k1", "k2", "k3"):
        entry, built = cache.get_or_build(key, write_weights(key.encode(), calls))
        assert built and (entry.payload / "weights.bin").read_bytes() == key.encode()
    again, built = cache.get_or_build("k1", never_build)  # nothing lost: the local entries stand
    assert not built and calls == [b"k1", b"k2", b"k3"]
    warning, = remote_warnings(caplog)
    assert warning.startswith("remote cache s3://bucket/prefix unusable (")
    assert warning.endswith("this run uses the local cache only") and "\n" not in warning


def test_a_missing_bucket_is_one_warning_and_a_local_only_run(s3_url, tmp_path, caplog):
    missing = s3_url.replace("s3://cache-", "s3://missing-")
    cache = ArtifactCache(tmp_path / "a", remote=RemoteCache(missing))
    for key in ("k1", "k2"):
        _, built = cache.get_or_build(key, write_weights(b"w"))
        assert built
    warning, = remote_warnings(caplog)
    assert "FileNotFoundError" in warning and missing in warning


def test_an_upload_without_its_manifest_is_no_entry(s3_url, tmp_path, caplog):
    # a machine killed between its payload and its manifest: the key is a miss, not a corrupt entry
    fs, root = store(s3_url)
    fs.pipe_file(f"{root}/k1/payload/weights.bin", b"half")
    fs.pipe_file(f"{root}/.tmp/k1-deadbeef/payload/weights.bin", b"half")  # and its temporary upload
    calls = []
    ArtifactCache(tmp_path / "a", remote=RemoteCache(s3_url)).get_or_build("k1", write_weights(b"whole", calls))
    assert calls == [b"whole"] and remote_warnings(caplog) == []
    assert fs.cat_file(f"{root}/k1/payload/weights.bin") == b"whole"
    assert not fs.find(f"{root}/.tmp")  # the dead upload was cleared by the key's lease holder
    _, built = ArtifactCache(tmp_path / "b", remote=RemoteCache(s3_url)).get_or_build("k1", never_build)
    assert not built


def test_a_rebuild_replaces_the_remote_entry(s3_url, tmp_path):
    ArtifactCache(tmp_path / "a", remote=RemoteCache(s3_url)).get_or_build("k1", write_weights(b"one"))
    ArtifactCache(tmp_path / "b", remote=RemoteCache(s3_url)).get_or_build("k1", write_weights(b"two"), rebuild=True)
    entry, built = ArtifactCache(tmp_path / "c", remote=RemoteCache(s3_url)).get_or_build("k1", never_build)
    assert not built and (entry.payload / "weights.bin").read_bytes() == b"two"


def test_one_build_per_key_across_machines_on_s3(s3_url, tmp_path):
    assert sorted(racing_machines(s3_url, tmp_path)) == [(False, b"shared"), (True, b"shared")]


def test_a_dead_holders_lease_is_taken_over(s3_url, tmp_path, caplog):
    fs, root = store(s3_url)
    fs.pipe_file(f"{root}/.leases/k1.json", b'{"holder": "a machine that died", "beat": 0}')
    calls = []
    remote = RemoteCache(s3_url, lease_stale_s=0.5, poll_s=0.1)
    _, built = ArtifactCache(tmp_path / "a", remote=remote).get_or_build("k1", write_weights(b"w", calls))
    assert built and calls == [b"w"]
    warning, = remote_warnings(caplog)
    assert "lease of k1 is stale" in warning and "a machine that died" in warning
    assert not fs.exists(f"{root}/.leases/k1.json")  # released after the upload


def test_a_live_holders_lease_is_waited_for(s3_url, tmp_path):
    # the holder keeps beating: a waiter whose stale limit is shorter than the build still waits
    holder = RemoteCache(s3_url, lease_stale_s=0.4, poll_s=0.05)
    waiting = ArtifactCache(tmp_path / "b", remote=RemoteCache(s3_url, lease_stale_s=0.4, poll_s=0.05))
    with holder._lease("k1"):
        waiter_result = []
        waiter = threading.Thread(target=lambda: waiter_result.append(waiting.get_or_build("k1", never_build)))
        waiter.start()
        time.sleep(1.5)  # several stale limits: only the holder's beats keep the waiter waiting
        assert waiter.is_alive()
        ArtifactCache(tmp_path / "a", remote=None).get_or_build("k1", write_weights(b"held"))
        holder._write_back(ArtifactCache(tmp_path / "a").lookup("k1"), replace=False)
        waiter.join(10)
    (entry, built), = waiter_result
    assert not built and (entry.payload / "weights.bin").read_bytes() == b"held"


def test_a_local_hit_is_shared_unless_another_machine_holds_the_lease(s3_url, tmp_path):
    ArtifactCache(tmp_path / "a").get_or_build("k1", write_weights(b"w"))  # before the remote was configured
    fs, root = store(s3_url)
    fs.pipe_file(f"{root}/.leases/k1.json", b'{"holder": "another machine", "beat": 0}')
    _, built = ArtifactCache(tmp_path / "a", remote=RemoteCache(s3_url)).get_or_build("k1", never_build)
    assert not built and not fs.exists(f"{root}/k1/manifest.json")  # left to the holder, without waiting
    fs.rm_file(f"{root}/.leases/k1.json")
    ArtifactCache(tmp_path / "a", remote=RemoteCache(s3_url)).get_or_build("k1", never_build)
    _, built = ArtifactCache(tmp_path / "b", remote=RemoteCache(s3_url)).get_or_build("k1", never_build)
    assert not built


def test_a_failed_build_releases_its_lease(s3_url, tmp_path):
    def broken(out):
        (out / "half.bin").write_bytes(b"x")
        raise RuntimeError("killed mid-build")

    with pytest.raises(RuntimeError, match="killed mid-build"):
        ArtifactCache(tmp_path / "a", remote=RemoteCache(s3_url)).get_or_build("k1", broken)
    fs, root = store(s3_url)
    assert not fs.find(root)  # no lease left for the next machine to wait out, nothing uploaded
