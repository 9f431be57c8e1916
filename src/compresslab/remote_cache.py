"""A remote artifact cache behind the local one (cache.py), on fsspec: entries shared between
machines the way Bazel or sccache share build outputs.

The remote holds the local layout, ``<url>/<key>/payload/...`` and ``<url>/<key>/manifest.json``.

- read-through: a local miss fetches the remote entry into the local cache's ``.tmp/``, checks every
  file's size and sha256 against the remote manifest, and publishes it with the local atomic rename;
- write-back: a local build is uploaded under ``<url>/.tmp/<key>-<id>/``, then copied into place,
  the manifest last (a key without a manifest is no entry, so a reader never takes a half upload);
- one build per key across machines: on S3 a lease object ``<url>/.leases/<key>.json`` written with
  a conditional put (If-None-Match: *), kept fresh by its holder; on a filesystem path a file lock
  beside the entries. Other stores (gs://, az://) have no lease: two machines may build a key at
  once; one that finds a manifest published when its build ends leaves it in place, and a payload
  mixed from two builds fails its checksums, so it is rejected, rebuilt and replaced, never loaded;
- a corrupt remote entry (a file whose sha256 or size differs from the manifest, a bad manifest) is
  rejected with one warning, rebuilt locally and replaced remotely;
- an unreachable or unusable store is one warning: the process goes on with the local cache only.

Credentials and endpoints come from the store's usual environment (AWS_* variables or
~/.aws for S3, GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_*), never from compresslab's files.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from compresslab.assets import sha256_file

log = logging.getLogger(__name__)
progress = logging.getLogger("compresslab.progress")

ENV = "COMPRESSLAB_REMOTE_CACHE"
OPTION = "--compresslab-remote-cache"
# scheme -> the fsspec backend package it needs (None: fsspec's own)
BACKENDS = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs",
            "abfss": "adlfs", "file": None}
VALID = "s3://BUCKET[/PREFIX], gs://BUCKET[/PREFIX], az://CONTAINER[/PREFIX], file://PATH or a filesystem path"
LEASE_STALE_S = 300.0  # a lease whose holder has not refreshed it for this long is a dead machine's
POLL_S = 2.0  # while another machine builds a key: how often to look for its entry
NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class RemoteCacheError(ValueError):
    """A remote cache URL that cannot work here (a bad scheme, a missing backend), in one line."""


class RemoteCorrupt(RuntimeError):
    pass


def scheme_of(url: str) -> str:
    scheme, sep, _ = url.partition("://")
    return scheme.lower() if sep else "file"


def check_url(url: str) -> str:
    """The URL's scheme; RemoteCacheError on a scheme outside BACKENDS or a backend not installed.
    Reads no network: an unreachable store is found (and warned about) at first use."""
    import importlib.util

    scheme, rest = scheme_of(url), url.partition("://")[2] if "://" in url else url
    where = f"remote cache {url!r}"
    if scheme not in BACKENDS:
        raise RemoteCacheError(f"{where}: unknown scheme {scheme}://; valid: {VALID}")
    if not rest.strip("/") and (scheme != "file" or not rest):
        raise RemoteCacheError(f"{where}: names no bucket or path; valid: {VALID}")
    for package in ("fsspec", BACKENDS[scheme]):
        if package and importlib.util.find_spec(package) is None:
            raise RemoteCacheError(f"{where}: the {scheme}:// backend needs the {package} package "
                                   f"(pip install {package})")
    return scheme


def configured(option: str | None) -> str | None:
    """The run's remote cache URL: the option, else $COMPRESSLAB_REMOTE_CACHE, else None (checked)."""
    url = option or os.environ.get(ENV) or None
    if url is not None:
        check_url(url)
    return url


def _storage_options(scheme: str) -> dict[str, Any]:
    # A fresh instance per store: fsspec's instance cache would keep an old endpoint's client.
    options: dict[str, Any] = {"skip_instance_cache": True}
    if BACKENDS[scheme] == "s3fs":
        # short timeouts and few retries: an unreachable endpoint costs seconds, then the run goes local-only
        options.update(use_listings_cache=False, config_kwargs={
            "connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 2, "mode": "standard"}})
    return options


class RemoteCache:
    """The remote side of ArtifactCache(remote=...): called under the local key's lock."""

    def __init__(self, url: str, lease_stale_s: float = LEASE_STALE_S, poll_s: float = POLL_S):
        self.url = url
        self.scheme = check_url(url)
        self.lease_stale_s, self.poll_s = lease_stale_s, poll_s
        self.offline = False
        self._fs: Any = None
        self._root = ""
        self._rejected: dict[str, str] = {}  # key -> the remote manifest text rejected as corrupt
        self._shared: set[str] = set()  # keys of local hits this process has made sure the remote holds
        self._holder = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    # --- the store ------------------------------------------------------------------------------------

    def _store(self) -> tuple[Any, str]:
        """The filesystem and root, made at first use (a path is created; raises on an unusable one)."""
        if self._fs is None:
            import fsspec

            fs, root = fsspec.core.url_to_fs(self.url, **_storage_options(self.scheme))
            if self.scheme == "file":
                fs.makedirs(root, exist_ok=True)
            # an object store is not probed: reading a prefix may be allowed where listing the bucket
            # is not; an unreachable endpoint fails the first read, a missing bucket the first lease or upload
            if self.scheme in ("s3", "s3a"):
                fs.retries = 2
            self._fs, self._root = fs, root.rstrip("/")
        return self._fs, self._root

    def _go_offline(self, err: BaseException) -> None:
        if not self.offline:
            self.offline = True
            reason = " ".join(str(err).split()) or type(err).__name__
            log.warning("remote cache %s unusable (%s: %s); this run uses the local cache only",
                        self.url, type(err).__name__, reason[:300])

    def _path(self, *parts: str) -> str:
        return "/".join((self._root, *parts))

    # --- the cache's entry point --------------------------------------------------------------------

    def get_or_build(self, cache: Any, key: str, build: Callable[[Path], None], inputs: dict[str, Any],
                     rebuild: bool) -> tuple[Any, bool]:
        """Under the local key's lock, after a local miss: the remote entry, else a build under the
        key's lease, uploaded. ``cache``: the ArtifactCache."""
        self._shared.add(key)  # looked up here: its later local hits need not look again
        if not rebuild:
            entry = self._read_through(cache, key)
            if entry is not None:
                return entry, False
        with self._lease(key):
            if not rebuild:  # another machine may have published it while we waited for its lease
                entry = self._read_through(cache, key)
                if entry is not None:
                    return entry, False
            entry = cache._build_and_publish(key, build, inputs)
            self._write_back(entry, replace=rebuild)
        return entry, True

    def share(self, entry: Any) -> None:
        """A local hit the remote lacks (built before the remote was configured, or while it was down):
        uploaded, unless another machine holds the key's lease. Looked up once per key per process."""
        if self.offline or entry.key in self._shared:
            return
        self._shared.add(entry.key)
        try:
            self._store()
            if self._remote_manifest(entry.key) is not None:
                return
        except Exception as err:  # noqa: BLE001
            self._go_offline(err)
            return
        with self._lease(entry.key, wait=False) as held:
            if held:
                self._write_back(entry, replace=False)

    # --- read-through ----------------------------------------------------------------------------------

    def _parse_manifest(self, key: str, text: str) -> dict[str, Any]:
        try:
            manifest = json.loads(text)
        except json.JSONDecodeError as err:
            raise RemoteCorrupt(f"remote cache entry {key}: unreadable manifest ({err})") from err
        files = manifest.get("files") if isinstance(manifest, dict) else None
        if not isinstance(files, dict) or not files or manifest.get("key") != key or any(
                name.startswith("/") or ".." in name.split("/") for name in files):
            raise RemoteCorrupt(f"remote cache entry {key}: manifest does not describe this entry")
        return manifest

    def _read_through(self, cache: Any, key: str) -> Any:
        """The remote entry published locally, or None (absent, rejected as corrupt, or the store is down)."""
        if self.offline:
            return None
        tmp = text = None
        try:
            self._store()
            text = self._remote_manifest(key)
            if text is None or self._rejected.get(key) == text:
                return None
            manifest = self._parse_manifest(key, text)
            tmp = cache.new_tmp(key)
            progress.info("fetching %s from the remote cache ...", key)
            self._fetch(key, manifest, tmp / "payload")
            (tmp / "manifest.json").write_text(text)
            return cache.publish_tmp(key, tmp, text, manifest)
        except RemoteCorrupt as err:
            self._rejected[key] = text
            log.warning("%s; rejected it, rebuilding %s here and replacing it remotely", err, key)
            return None
        except OSError as err:
            if err.errno in NO_ROOM:  # the local disk, not the store: the cache's own one-line error
                from compresslab.cache import CacheError

                raise CacheError(f"fetching {key}: could not write the artifact ({err.strerror}: "
                                 f"{err.filename or tmp})") from err
            self._go_offline(err)
            return None
        except Exception as err:  # noqa: BLE001  # a store's own errors (botocore, aiohttp, azure): down
            self._go_offline(err)
            return None
        finally:
            if tmp is not None and tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _fetch(self, key: str, manifest: dict[str, Any], payload: Path) -> None:
        fs, _ = self._store()
        for name, meta in manifest["files"].items():
            local = payload / name
            local.parent.mkdir(parents=True, exist_ok=True)
            try:
                fs.get_file(self._path(key, "payload", name), str(local))
            except FileNotFoundError as err:
                raise RemoteCorrupt(f"remote cache entry {key}: {name} is missing") from err
            if local.stat().st_size != meta.get("size") or sha256_file(local) != meta.get("sha256"):
                raise RemoteCorrupt(f"remote cache entry {key}: {name} fails its checksum")

    # --- write-back ------------------------------------------------------------------------------------

    def _write_back(self, entry: Any, replace: bool) -> None:
        """Upload a local entry: under a temporary prefix, then into place, the manifest last. An
        entry another machine published meanwhile stays (first manifest wins) unless ``replace`` or
        it is the one rejected as corrupt."""
        if self.offline:
            return
        key, tmp = entry.key, None
        try:
            fs, _ = self._store()
            found = self._remote_manifest(key)
            if found is not None and not replace and self._rejected.get(key) != found:
                return
            tmp = self._path(".tmp", f"{key}-{uuid.uuid4().hex[:12]}")
            names = sorted(entry.manifest["files"])
            progress.info("uploading %s to the remote cache ...", key)
            for name in names:
                self._put(entry.payload / name, f"{tmp}/payload/{name}")
            self._put(entry.path / "manifest.json", f"{tmp}/manifest.json")
            final = self._path(key)
            if found is not None or replace:  # replacing: it stops being an entry before its files change
                with contextlib.suppress(FileNotFoundError):
                    fs.rm_file(f"{final}/manifest.json")
                with contextlib.suppress(FileNotFoundError):
                    fs.rm(final, recursive=True)
            for name in names:
                self._move(f"{tmp}/payload/{name}", f"{final}/payload/{name}")
            self._move(f"{tmp}/manifest.json", f"{final}/manifest.json")
            self._rejected.pop(key, None)
        except Exception as err:  # noqa: BLE001  # down mid-upload: the local entry is whole, nothing lost
            self._go_offline(err)
        finally:
            if tmp is not None and not self.offline:
                with contextlib.suppress(Exception):
                    self._fs.rm(tmp, recursive=True)

    def _remote_manifest(self, key: str) -> str | None:
        """The manifest's text, or None when the key has no entry (no manifest: no entry)."""
        try:
            return self._fs.cat_file(self._path(key, "manifest.json")).decode()
        except FileNotFoundError:
            return None

    def _parent_dir(self, path: str) -> None:
        if self.scheme == "file":  # an object store has no directories to make
            self._fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)

    def _put(self, local: Path, remote: str) -> None:
        self._parent_dir(remote)
        self._fs.put_file(str(local), remote)

    def _move(self, source: str, target: str) -> None:
        """Into place: a rename on a filesystem path, a server-side copy on an object store (the
        temporary prefix is removed as a whole after)."""
        self._parent_dir(target)
        if self.scheme == "file":
            self._fs.mv(source, target)
        else:
            self._fs.cp_file(source, target)

    # --- one build per key across machines ------------------------------------------------------------

    @contextlib.contextmanager
    def _lease(self, key: str, wait: bool = True) -> Iterator[bool]:
        """Held while this process builds or uploads ``key``; yields whether this process may upload it:
        True when it holds the lease or the store has none (or is down: nothing is uploaded then).
        ``wait``: wait for another holder, returning early without the lease once its entry appears
        (the caller then fetches it); else give up at once when another machine holds it (False)."""
        release: Callable[[], None] | None = None
        leased = self.scheme in ("file", "s3", "s3a")
        if not self.offline and leased:
            try:
                self._store()
                lease = self._file_lease if self.scheme == "file" else self._object_lease
                release = lease(key, wait)
            except Exception as err:  # noqa: BLE001
                self._go_offline(err)
        try:
            yield release is not None or not leased or self.offline
        finally:
            if release is not None:
                release()

    def _file_lease(self, key: str, wait: bool) -> Callable[[], None] | None:
        from filelock import FileLock, Timeout

        locks = Path(self._path(".locks"))
        locks.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(locks / f"{key}.lock"))
        try:
            lock.acquire(timeout=self.poll_s if wait else 0)
        except Timeout:
            if not wait:
                return None
            log.info("waiting for another machine that is building %s", key)
            lock.acquire()
        self._clear_stale_tmp(key)
        return lock.release

    def _object_lease(self, key: str, wait: bool) -> Callable[[], None] | None:
        """A conditional put of the lease object; while another holder keeps its lease fresh, wait
        for its entry. A lease unchanged for lease_stale_s (by this machine's clock: no clock skew)
        is a dead holder's: it is deleted and taken over."""
        fs, lease = self._fs, self._path(".leases", f"{key}.json")
        last, since, waited = None, time.monotonic(), False
        while True:
            try:
                fs.pipe_file(lease, self._lease_text(0), mode="create")
                break
            except FileExistsError:
                if not wait:
                    return None
            published = self._remote_manifest(key)
            if published is not None and published != self._rejected.get(key):
                return None  # published while we waited: the caller fetches it
            try:
                current = fs.cat_file(lease)
            except FileNotFoundError:
                continue  # released just now: try to take it
            if current != last:
                last, since = current, time.monotonic()
            elif time.monotonic() - since > self.lease_stale_s:
                log.warning("remote cache lease of %s is stale (%s); taking it over", key, current.decode()[:200])
                with contextlib.suppress(FileNotFoundError):
                    fs.rm_file(lease)
                continue
            if not waited:
                log.info("waiting for another machine that is building %s", key)
                waited = True
            time.sleep(self.poll_s)
        self._clear_stale_tmp(key)
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(lease, stop), daemon=True)
        beat.start()

        def release() -> None:
            stop.set()
            beat.join()
            with contextlib.suppress(Exception):
                fs.rm_file(lease)
        return release

    def _lease_text(self, beat: int) -> bytes:
        return json.dumps({"holder": self._holder, "beat": beat, "time": time.time()}).encode()

    def _heartbeat(self, lease: str, stop: threading.Event) -> None:
        beat = 0
        while not stop.wait(self.lease_stale_s / 4):
            beat += 1
            with contextlib.suppress(Exception):  # a missed beat: a waiter may take over, a harmless race
                self._fs.pipe_file(lease, self._lease_text(beat))

    def _clear_stale_tmp(self, key: str) -> None:
        """Under the key's lease only: an upload of this key still in .tmp is a dead process's."""
        with contextlib.suppress(Exception):
            for stale in self._fs.glob(self._path(".tmp", f"{key}-*")):
                self._fs.rm(stale, recursive=True)
