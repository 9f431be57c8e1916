import importlib
import json
import multiprocessing
import sys
import time
from pathlib import Path

import pytest

from compresslab import cases, code_digest
from compresslab.cache import MANIFEST, ArtifactCache, CorruptEntry, cache_key
from tiny import SyntheticSentiment


def write_file(content: bytes):
    def build(out: Path) -> None:
        (out / "weights.bin").write_bytes(content)
        (out / "sub").mkdir()
        (out / "sub" / "config.json").write_text("{}")
    return build


def test_key_is_stable_and_order_independent():
    assert cache_key({"a": 1, "b": [1, 2]}) == cache_key({"b": [1, 2], "a": 1})
    assert cache_key({"a": 1}) != cache_key({"a": 2})


def test_publish_then_hit(tmp_path):
    cache = ArtifactCache(tmp_path)
    entry, built = cache.get_or_build("k1", write_file(b"abc"), inputs={"x": 1})
    assert built and (entry.payload / "weights.bin").read_bytes() == b"abc"
    manifest = json.loads((entry.path / MANIFEST).read_text())
    assert set(manifest["files"]) == {"weights.bin", "sub/config.json"}
    assert manifest["inputs"] == {"x": 1}
    again, built_again = ArtifactCache(tmp_path).get_or_build("k1", write_file(b"other"))
    assert not built_again and (again.payload / "weights.bin").read_bytes() == b"abc"


def test_failed_build_publishes_nothing_and_leaves_no_tmp(tmp_path):
    cache = ArtifactCache(tmp_path)

    def broken(out: Path) -> None:
        (out / "half.bin").write_bytes(b"x")
        raise RuntimeError("killed mid-build")

    with pytest.raises(RuntimeError, match="killed mid-build"):
        cache.get_or_build("k2", broken)
    assert not (tmp_path / "k2").exists()
    assert list((tmp_path / ".tmp").iterdir()) == []
    _, built = cache.get_or_build("k2", write_file(b"ok"))
    assert built


def test_stale_tmp_of_a_killed_process_is_cleared(tmp_path):
    stale = tmp_path / ".tmp" / "k3-99999-deadbeef" / "payload"
    stale.mkdir(parents=True)
    ArtifactCache(tmp_path).get_or_build("k3", write_file(b"ok"))
    assert not stale.parent.exists()


@pytest.mark.parametrize("damage", ["edit", "truncate", "extra-file", "no-manifest", "bad-manifest"])
def test_corrupt_entry_is_detected_and_rebuilt(tmp_path, damage, caplog):
    ArtifactCache(tmp_path).get_or_build("k4", write_file(b"original"))
    entry_dir = tmp_path / "k4"
    if damage == "edit":
        (entry_dir / "payload" / "weights.bin").write_bytes(b"origina!")
    elif damage == "truncate":
        (entry_dir / "payload" / "weights.bin").write_bytes(b"orig")
    elif damage == "extra-file":
        (entry_dir / "payload" / "stray.bin").write_bytes(b"?")
    elif damage == "no-manifest":
        (entry_dir / MANIFEST).unlink()
    else:
        (entry_dir / MANIFEST).write_text("{not json")
    fresh = ArtifactCache(tmp_path)
    with pytest.raises(CorruptEntry):
        fresh.lookup("k4")
    entry, built = fresh.get_or_build("k4", write_file(b"rebuilt"))
    assert built and (entry.payload / "weights.bin").read_bytes() == b"rebuilt"
    assert len(list((tmp_path / ".corrupt").iterdir())) == 1  # kept aside for inspection, never loaded
    warning, = [r for r in caplog.records if r.name == "compresslab.cache" and r.levelname == "WARNING"]
    assert "k4" in warning.getMessage() and "rebuilding" in warning.getMessage()


def _slow_builder(root: str, counter: str) -> None:
    def build(out: Path) -> None:
        with open(counter, "a") as handle:
            handle.write("built\n")
        time.sleep(1.0)
        (out / "weights.bin").write_bytes(b"shared")
    entry, _ = ArtifactCache(Path(root)).get_or_build("shared", build)
    assert (entry.payload / "weights.bin").read_bytes() == b"shared"


def test_concurrent_builders_build_once(tmp_path):
    counter = tmp_path / "count.txt"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_slow_builder, args=(str(tmp_path / "c"), str(counter))) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    assert counter.read_text().count("built") == 1


def test_rebuild_replaces_entry(tmp_path):
    cache = ArtifactCache(tmp_path)
    cache.get_or_build("k5", write_file(b"one"))
    entry, built = cache.get_or_build("k5", write_file(b"two"), rebuild=True)
    assert built and (entry.payload / "weights.bin").read_bytes() == b"two"


EDITED_TASK = """from dataclasses import dataclass

from tiny import SyntheticSentiment


@dataclass(frozen=True)
class EditedTask(SyntheticSentiment):
    pass
"""


def _rewrite(path: Path, source: str) -> None:
    path.write_text(source)
    code_digest.clear_cache()  # digests are cached per process: an edit is seen by the next run


def test_evaluation_key_follows_the_task_and_runner_code(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    _rewrite(tmp_path / "digest_edited_task.py", EDITED_TASK)
    _rewrite(tmp_path / "digest_runner_part.py", "SCALE = 1\n")
    monkeypatch.setattr(cases, "RUNNER_MODULES", (*cases.RUNNER_MODULES, "digest_runner_part"))
    edited_task = importlib.import_module("digest_edited_task").EditedTask()
    sys.modules.pop("digest_edited_task")  # the class lives on; the digest reads the file from sys.path

    def keys() -> tuple[str, str]:
        return (cases.evaluation_key("artifact", [edited_task], "cpu", 2),
                cases.evaluation_key("artifact", [SyntheticSentiment()], "cpu", 2))

    edited_before, other_before = keys()
    _rewrite(tmp_path / "digest_edited_task.py", EDITED_TASK + "# a scoring fix\n")
    edited_after, other_after = keys()
    assert edited_after != edited_before and other_after == other_before
    _rewrite(tmp_path / "digest_runner_part.py", "SCALE = 2\n")
    assert keys()[1] != other_before  # a runner fix re-evaluates every task
    code_digest.clear_cache()
