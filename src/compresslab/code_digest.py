"""Digests of the code that shapes an artifact or an evaluation, so cache keys follow the code.

A module's digest hashes the bytes of its source file and of every compresslab module it
imports, transitively, sorted by module name. A fix to a method (or to a loader it uses)
therefore changes the keys of the artifacts that method builds, and only those.

What is followed, and why:
- imports are read with ``ast`` from the whole file, including imports inside functions
  (a lazy import is still code the module runs);
- only modules inside the ``compresslab`` package are followed: third-party code is pinned by
  the library versions that enter the keys beside the digest;
- ``from compresslab.x import y`` follows ``compresslab.x.y`` when ``y`` is a submodule, and
  ``compresslab.x`` otherwise; a package's ``__init__`` is followed only when something is
  imported from it by name, since the parent packages' bodies shape no artifact;
- the modules in ``NOT_FOLLOWED`` (presentation: plugin, CLI, reports) are listed by name in
  the digest but their sources are not read, so a report tweak rebuilds nothing;
- a module whose source cannot be read is listed as such, with a warning.
The root module itself may live outside compresslab (a user's method, a test's tiny source).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import logging
from pathlib import Path

log = logging.getLogger(__name__)

PACKAGE = "compresslab"
# Presentation modules: they read results, they never shape an artifact or a metric.
NOT_FOLLOWED = frozenset({"compresslab.plugin", "compresslab.cli", "compresslab.compare",
                          "compresslab.report", "compresslab.report_html"})
NOT_FOLLOWED_MARK = "not-followed"
NAMESPACE_MARK = "namespace-package"
NO_SOURCE_MARK = "no-source"


def _in_package(name: str) -> bool:
    return name == PACKAGE or name.startswith(PACKAGE + ".")


def _find_spec(name: str):
    """The module's spec, or None when it cannot be found (reported by the caller)."""
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError) as err:  # ValueError: a module in sys.modules without __spec__
        log.warning("code digest: cannot locate module %s: %s", name, err)
        return None


def _is_package(name: str) -> bool:
    spec = _find_spec(name)
    return spec is not None and spec.submodule_search_locations is not None


def _is_submodule(package: str, attribute: str) -> bool:
    # Only a package has submodules; asking for ``module.attr`` of a plain module would raise.
    return _is_package(package) and _find_spec(f"{package}.{attribute}") is not None


def _imported_base(node: ast.ImportFrom, name: str) -> str | None:
    """The absolute module an ``from ... import`` statement in module ``name`` reads from."""
    if not node.level:
        return node.module
    package = name if _is_package(name) else name.rpartition(".")[0]
    try:
        return importlib.util.resolve_name("." * node.level + (node.module or ""), package)
    except ImportError as err:  # a relative import beyond the top-level package
        log.warning("code digest: unresolvable relative import in %s: %s", name, err)
        return None


def _from_targets(node: ast.ImportFrom, name: str) -> set[str]:
    base = _imported_base(node, name)
    if base is None or not _in_package(base):
        return set()
    targets = set()
    for alias in node.names:
        if alias.name != "*" and _is_submodule(base, alias.name):
            targets.add(f"{base}.{alias.name}")
        else:
            targets.add(base)
    return targets


def imported_modules(name: str, source: bytes) -> tuple[str, ...]:
    """The compresslab modules that the source of module ``name`` imports, anywhere in the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source, filename=name)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if _in_package(alias.name))
        elif isinstance(node, ast.ImportFrom):
            found |= _from_targets(node, name)
    found.discard(name)
    return tuple(sorted(found))


def _source_bytes(spec) -> bytes | None:
    """The bytes of the module's file; None for a namespace package or a module without a file."""
    origin = spec.origin if spec is not None else None
    if origin is None or not Path(origin).is_file():
        return None
    return Path(origin).read_bytes()


@functools.cache
def _module_facts(name: str) -> tuple[str, tuple[str, ...]]:
    """(what stands for the module in a digest, the compresslab modules it imports), read once."""
    if name in NOT_FOLLOWED:
        return NOT_FOLLOWED_MARK, ()
    spec = _find_spec(name)
    source = _source_bytes(spec)
    if source is None:
        if spec is not None and spec.submodule_search_locations is not None:
            return NAMESPACE_MARK, ()  # a directory without __init__.py: no code of its own
        log.warning("code digest: no source file for module %s; its code cannot enter cache keys", name)
        return NO_SOURCE_MARK, ()
    return hashlib.sha256(source).hexdigest(), imported_modules(name, source)


def module_sources(*names: str) -> dict[str, str]:
    """Module name -> sha256 of its source (or a mark), for ``names`` and what they import."""
    seen: dict[str, str] = {}
    pending = list(names)
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen[name], imports = _module_facts(name)
        pending.extend(imports)
    return dict(sorted(seen.items()))


@functools.cache
def module_digest(*names: str) -> str:
    """One hex digest of the modules ``names`` and the compresslab modules they import."""
    digest = hashlib.sha256()
    for name, value in module_sources(*names).items():
        digest.update(f"{name}\0{value}\n".encode())
    return digest.hexdigest()[:24]


def object_digest(obj: object) -> str:
    """The digest of the module that defines ``obj``'s class (a method, a source, a task)."""
    return module_digest(type(obj).__module__)


def clear_cache() -> None:
    """Forget digests computed in this process (tests that rewrite a module's source)."""
    for cached in (_module_facts, module_digest):
        cached.cache_clear()
