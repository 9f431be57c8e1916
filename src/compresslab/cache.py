"""Content-addressed artifact cache.

An entry is a directory ``<root>/<key>/`` holding ``payload/`` (what the build produced,
as it would be shipped) and ``manifest.json`` (the key's inputs, every payload file's size
and sha256, build time). Guarantees:

- atomic publish: a build writes into ``<root>/.tmp/<key>-<pid>-<rand>/`` and is renamed into
  place only once complete, so a killed build leaves no half-entry under the key;
- one build per key across processes (pytest-xdist workers): a file lock per key;
- a corrupt or edited entry (checksum or size mismatch, missing manifest) is detected,
  moved aside to ``<root>/.corrupt/`` and rebuilt, never loaded. Only the holder of the key's
  lock moves it, after judging it again (another process may have repaired it meanwhile), so
  racing workers repair it once;
- an entry is verified once per process per published manifest: a re-publish by another
  process is verified again (damage done later to an entry this process already verified is
  not re-hashed);
- a full disk (ENOSPC, EDQUOT, EFBIG) while building fails with one line, a ``CacheError``,
  and leaves nothing under the key nor in ``.tmp``; the next call builds afresh;
- ``check_usable(root)`` turns an unusable cache dir into one ``CacheError`` line;
- with ``remote`` (remote_cache.RemoteCache), a local miss is fetched from the remote store, and a
  local build is uploaded to it (remote_cache.py says how, and what it guarantees).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from compresslab.assets import sha256_file

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
PAYLOAD = "payload"
SCHEMA = 1
LOCK_WAIT_LOG_S = 5.0
NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
USABLE_HINT = ("point COMPRESSLAB_CACHE_DIR, --compresslab-cache-dir (pytest) or --cache-dir (compresslab build) "
               "at a writable directory")


def cache_key(inputs: dict[str, Any]) -> str:
    """Stable hash of a JSON-able description of everything that determines an artifact."""
    canonical = json.dumps(inputs, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:24]


class CorruptEntry(RuntimeError):
    pass


class CacheError(ValueError):
    """An unusable cache dir or an artifact that could not be written, said in one line."""


def check_usable(root: Path) -> None:
    """Create ``root`` if missing; raise CacheError when it cannot hold a cache."""
    root = Path(root)
    blocker = next((p for p in (root, *root.parents) if os.path.lexists(p)), None)
    if blocker is not None and not blocker.is_dir():
        where = "" if blocker == root else f"{blocker} "
        what = "is a regular file, not a directory" if blocker.is_file() else "is not a directory"
        raise CacheError(f"cache dir {root}: {where}{what} ({USABLE_HINT})")
    try:
        root.mkdir(parents=True, exist_ok=True)
        _probe_write(root)
    except OSError as err:
        raise CacheError(f"cache dir {root}: not writable ({err.strerror}) ({USABLE_HINT})") from err


def _probe_write(root: Path) -> None:
    # Really write: os.access reads permission bits, which root ignores and read-only mounts defeat.
    probe = root / f".probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        probe.write_bytes(b"ok")
    finally:
        probe.unlink(missing_ok=True)


@dataclass(frozen=True)
class Entry:
    key: str
    path: Path
    manifest: dict[str, Any]

    @property
    def payload(self) -> Path:
        return self.path / PAYLOAD

    @property
    def build_s(self) -> float:
        return float(self.manifest.get("build_s", 0.0))


def _payload_files(payload: Path) -> dict[str, dict[str, Any]]:
    files = {}
    for path in sorted(p for p in payload.rglob("*") if p.is_file()):
        files[path.relative_to(payload).as_posix()] = {
            "size": path.stat().st_size,
            "sha256": sha256_file(path),
        }
    return files


class ArtifactCache:
    def __init__(self, root: Path, lock_timeout_s: float = 3 * 3600, remote: Any = None):
        self.root = Path(root)
        self.lock_timeout_s = lock_timeout_s
        self.remote = remote  # remote_cache.RemoteCache or None
        # key -> the manifest text this process verified the entry against (see lookup).
        self._verified: dict[str, str] = {}

    def _tmp_root(self) -> Path:
        return self.root / ".tmp"

    def _lock(self, key: str) -> FileLock:
        (self.root / ".locks").mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.root / ".locks" / f"{key}.lock"))

    def path_for(self, key: str) -> Path:
        return self.root / key

    def lookup(self, key: str) -> Entry | None:
        """A verified entry, or None when absent. Raises CorruptEntry when present but damaged."""
        path = self.path_for(key)
        if not path.exists():
            return None
        try:
            text = (path / MANIFEST).read_text()
            manifest = json.loads(text)
        except (OSError, json.JSONDecodeError) as err:
            raise CorruptEntry(f"cache entry {key}: unreadable manifest ({err})") from err
        # Hash once per published manifest: a re-publish writes a new one (created, build_s,
        # checksums), so another process's rebuild is verified again rather than trusted.
        if self._verified.get(key) != text:
            try:
                self._verify(key, path / PAYLOAD, manifest)
            except OSError as err:  # files vanishing under us: another process is moving the entry
                raise CorruptEntry(f"cache entry {key}: unreadable payload ({err})") from err
            self._verified[key] = text
        return Entry(key, path, manifest)

    def _verify(self, key: str, payload: Path, manifest: dict[str, Any]) -> None:
        expected = manifest.get("files") if isinstance(manifest, dict) else None
        if not isinstance(expected, dict) or not expected or manifest.get("key") != key:
            raise CorruptEntry(f"cache entry {key}: manifest does not describe this entry")
        actual_names = {p.relative_to(payload).as_posix() for p in payload.rglob("*") if p.is_file()}
        if actual_names != set(expected):
            raise CorruptEntry(f"cache entry {key}: payload files differ from the manifest")
        for name, meta in expected.items():
            file = payload / name
            if file.stat().st_size != meta["size"] or sha256_file(file) != meta["sha256"]:
                raise CorruptEntry(f"cache entry {key}: {name} fails its checksum")

    def _quarantine(self, key: str, reason: str) -> None:
        """Move a damaged entry aside. Only under the key's lock: nobody else publishes it meanwhile."""
        trash = self.root / ".corrupt" / f"{key}-{int(time.time())}-{uuid.uuid4().hex[:6]}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(self.path_for(key), trash)
        except FileNotFoundError:  # already moved aside (by hand, or by a process of an older version)
            log.warning("%s; it is gone already, rebuilding %s", reason, key)
            return
        log.warning("%s; moved it to %s, rebuilding %s", reason, trash, key)

    def _clear_stale_tmp(self, key: str) -> None:
        # Only called under the key's lock, so any tmp dir of this key is a dead build's.
        for stale in self._tmp_root().glob(f"{key}-*"):
            shutil.rmtree(stale, ignore_errors=True)

    def get_or_build(
        self,
        key: str,
        build: Callable[[Path], None],
        inputs: dict[str, Any] | None = None,
        rebuild: bool = False,
    ) -> tuple[Entry, bool]:
        """Return (entry, built_now). ``build(payload_dir)`` writes the artifact into an empty dir."""
        if not rebuild:
            entry = self._lookup_verified(key)
            if entry is not None:
                self._share(entry)
                return entry, False
        lock = self._lock(key)
        self._acquire(lock, key)
        try:
            # Judged again: while we waited, another process may have published the entry, or
            # moved a damaged one aside and rebuilt it (then it is valid and returned unbuilt).
            entry = None if rebuild else self._lookup_or_quarantine(key)
            if entry is not None:
                self._share(entry)
                return entry, False
            if self.remote is not None:
                return self.remote.get_or_build(self, key, build, inputs or {}, rebuild)
            return self._build_and_publish(key, build, inputs or {}), True
        finally:
            lock.release()

    def _share(self, entry: Entry) -> None:
        if self.remote is not None:  # a local hit the remote lacks is uploaded (remote_cache.RemoteCache.share)
            self.remote.share(entry)

    def _acquire(self, lock: FileLock, key: str) -> None:
        try:
            lock.acquire(timeout=LOCK_WAIT_LOG_S)
            return
        except Timeout:
            log.info("waiting for another process that is building %s", key)
        lock.acquire(timeout=self.lock_timeout_s)

    def _lookup_verified(self, key: str) -> Entry | None:
        """Without the lock: a verified entry or None. A damaged one is left for the lock holder to
        move: two processes moving it at once would fail (FileNotFoundError) or move aside a fresh rebuild."""
        try:
            return self.lookup(key)
        except CorruptEntry:
            return None

    def _lookup_or_quarantine(self, key: str) -> Entry | None:
        """Under the key's lock only."""
        try:
            return self.lookup(key)
        except CorruptEntry as err:
            self._quarantine(key, str(err))
            return None

    def new_tmp(self, key: str) -> Path:
        """Under the key's lock: an empty ``<tmp>/payload/`` to fill, published by publish_tmp."""
        self._clear_stale_tmp(key)
        tmp = self._tmp_root() / f"{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        (tmp / PAYLOAD).mkdir(parents=True)
        return tmp

    def publish_tmp(self, key: str, tmp: Path, text: str, manifest: dict[str, Any]) -> Entry:
        """Under the key's lock: the complete ``tmp`` (payload and manifest ``text``) renamed into place."""
        final = self.path_for(key)
        if final.exists():  # only with rebuild=True: replace the old entry
            shutil.rmtree(final)
        os.replace(tmp, final)
        self._verified[key] = text
        return Entry(key, final, manifest)

    def _build_and_publish(self, key: str, build: Callable[[Path], None], inputs: dict[str, Any]) -> Entry:
        tmp = self.new_tmp(key)
        try:
            started = time.perf_counter()
            build(tmp / PAYLOAD)
            build_s = time.perf_counter() - started
            manifest = {
                "schema": SCHEMA,
                "key": key,
                "inputs": inputs,
                "build_s": round(build_s, 3),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "files": _payload_files(tmp / PAYLOAD),
            }
            if not manifest["files"]:
                raise RuntimeError(f"build of {key} produced no files")
            text = json.dumps(manifest, indent=2, default=str)
            (tmp / MANIFEST).write_text(text)
            entry = self.publish_tmp(key, tmp, text, manifest)
        except BaseException as err:
            shutil.rmtree(tmp, ignore_errors=True)
            # Only a full disk becomes a CacheError: any other OSError of a build (a missing input,
            # a failed download) says more as it is.
            if isinstance(err, OSError) and err.errno in NO_ROOM:
                where = err.filename or tmp
                raise CacheError(f"building {key}: could not write the artifact ({err.strerror}: {where})") from err
            raise
        return entry
