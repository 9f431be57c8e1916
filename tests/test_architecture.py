"""The package's layering, read from the source with ``ast`` (nothing is imported).

- models/ never imports methods/, not even lazily inside a function: methods build on models
  (loading, runners), so a reverse edge is a hidden cycle and drags every method's code into
  what a model loader depends on (and into its cache keys, see code_digest.py).
- No cycle among the imports a module runs when it is first imported. Only those count: an
  import inside a function runs later, once every module involved has finished loading.

Each check also runs on a small broken package written to tmp_path, so it is shown able to fail.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "compresslab"


def module_files(src: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> its file, for every module of ``package`` under ``src``."""
    modules = {}
    for file in sorted((src / package).rglob("*.py")):
        parts = file.relative_to(src).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    return modules


def _base(node: ast.ImportFrom, name: str, file: Path) -> str:
    """The absolute module a ``from ... import`` in module ``name`` reads from."""
    if not node.level:
        return node.module or ""
    package = name.split(".") if file.name == "__init__.py" else name.split(".")[:-1]
    anchor = package[: len(package) - node.level + 1]
    return ".".join([*anchor, node.module] if node.module else anchor)


def _targets(node: ast.Import | ast.ImportFrom, name: str, file: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules an import statement loads: ``from a import b`` is module a.b when
    that is a module of ours, else module a."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in modules}
    base = _base(node, name, file)
    found = {f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names}
    return found & modules.keys()


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(test)


def _import_time_nodes(tree: ast.Module):
    """Statements that run when the module is imported: not function bodies (they run when
    called), not ``if TYPE_CHECKING:`` blocks (they never run)."""
    pending = list(tree.body)
    while pending:
        node = pending.pop()
        yield node
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) or _is_type_checking(node):
            continue
        pending.extend(ast.iter_child_nodes(node))


def import_graph(src: Path, package: str, module_level_only: bool) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (at import time only, or anywhere in the file)."""
    modules = module_files(src, package)
    graph = {}
    for name, file in modules.items():
        tree = ast.parse(file.read_text(), filename=str(file))
        nodes = _import_time_nodes(tree) if module_level_only else ast.walk(tree)
        imports = [node for node in nodes if isinstance(node, (ast.Import, ast.ImportFrom))]
        graph[name] = set().union(*(_targets(node, name, file, modules) for node in imports)) - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, in name order)."""
    done: set[str] = set()
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        if name in path:
            return [*path[path.index(name):], name]
        if name in done:
            return None
        path.append(name)
        cycle = next((found for target in sorted(graph.get(name, ())) if (found := visit(target))), None)
        path.pop()
        done.add(name)
        return cycle

    return next((found for name in sorted(graph) if (found := visit(name))), None)


def layer_violations(src: Path, package: str, lower: str, upper: str) -> list[str]:
    """'module -> imported' for every import, anywhere in a file, from ``lower`` into ``upper``."""
    low, up = f"{package}.{lower}", f"{package}.{upper}"
    graph = import_graph(src, package, module_level_only=False)
    return sorted(f"{name} -> {target}" for name, targets in graph.items() if name.startswith(low)
                  for target in targets if target == up or target.startswith(up + "."))


def write_package(root: Path, files: dict[str, str]) -> Path:
    """A throwaway package under root/src from {relative path: source}; returns root/src."""
    for relative, source in files.items():
        file = root / "src" / relative
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(source)
    return root / "src"


BROKEN = {
    "fakepkg/__init__.py": "",
    "fakepkg/errors.py": "",
    "fakepkg/models/__init__.py": "",
    "fakepkg/models/loading.py": "from fakepkg.models import spec\n\n\ndef load():\n"
                                 "    from fakepkg.methods.static import reload\n    return reload()\n",
    "fakepkg/models/spec.py": "from ..errors import *\n",
    "fakepkg/methods/__init__.py": "",
    "fakepkg/methods/base.py": "from typing import TYPE_CHECKING\n\nfrom fakepkg.models.loading import load\n\n"
                               "if TYPE_CHECKING:\n    from fakepkg.methods import static\n",
    "fakepkg/methods/static.py": "import fakepkg.methods.base\n\ntry:\n    from . import cycle_b\n"
                                 "except ImportError:\n    pass\n",
    "fakepkg/methods/cycle_b.py": "from .static import reload as _\n\n\ndef later():\n    import fakepkg.methods.base\n",
}


def test_models_never_import_methods():
    violations = layer_violations(SRC, PACKAGE, "models", "methods")
    assert not violations, ("models/ must not import methods/ (move what it needs into models/ or "
                            "compresslab/errors.py): " + "; ".join(violations))


def test_the_layer_check_sees_an_import_inside_a_function(tmp_path):
    src = write_package(tmp_path, BROKEN)
    assert layer_violations(src, "fakepkg", "models", "methods") == ["fakepkg.models.loading -> fakepkg.methods.static"]


def test_no_import_cycle_at_module_level():
    cycle = find_cycle(import_graph(SRC, PACKAGE, module_level_only=True))
    assert cycle is None, "module-level import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_finds_a_cycle_and_only_an_import_time_one(tmp_path):
    graph = import_graph(write_package(tmp_path, BROKEN), "fakepkg", module_level_only=True)
    # base -> static is TYPE_CHECKING only, cycle_b -> base and loading -> static are inside functions
    assert graph["fakepkg.methods.base"] == {"fakepkg.models.loading"}
    assert graph["fakepkg.methods.cycle_b"] == {"fakepkg.methods.static"}
    assert graph["fakepkg.models.spec"] == {"fakepkg.errors"}
    assert find_cycle(graph) == ["fakepkg.methods.cycle_b", "fakepkg.methods.static", "fakepkg.methods.cycle_b"]


def test_a_function_level_import_alone_is_no_cycle(tmp_path):
    src = write_package(tmp_path, {**BROKEN, "fakepkg/methods/cycle_b.py": "def later():\n    from . import static\n"})
    assert find_cycle(import_graph(src, "fakepkg", module_level_only=True)) is None


# --- the result record: one definition of each field, in results.py ----------------------------------

# Field names that are also ordinary words of other structures (a cache key's inputs, a cache
# manifest, a method's build record, a runtime's settings, a table's column title): a quoted one
# elsewhere names that structure's key, not the record's field.
SHARED_WORDS = {"device", "threads", "libraries", "sparsity", "runtime", "metrics", "recovery", "stages", "floors",
                "build_s", "train_s"}


def quoted_field_names(src: Path, names: set[str], record_module: Path) -> list[str]:
    """``file:line: name`` for every quoted occurrence of one of ``names`` in a source file of
    ``src`` other than the record's own module."""
    pattern = re.compile(r"""["'](%s)["']""" % "|".join(map(re.escape, sorted(names))))
    found = []
    for path in sorted(src.rglob("*.py")):
        if path == record_module:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            found += [f"{path.relative_to(src)}:{number}: {match}" for match in pattern.findall(line)]
    return found


def record_field_names() -> set[str]:
    from compresslab.results import LEGACY_NAMES, CaseResult

    names = {f.name for f in dataclasses.fields(CaseResult)} | set(LEGACY_NAMES) - {"method"}
    return names - SHARED_WORDS


def test_no_result_field_is_named_by_a_string_outside_the_record_module():
    found = quoted_field_names(SRC, record_field_names(), SRC / PACKAGE / "results.py")
    assert not found, "result fields named as strings outside results.py (use CaseResult's attributes): " + \
        "; ".join(found)


def test_the_field_name_check_finds_a_dict_key(tmp_path):
    (tmp_path / "tracker.py").write_text('def info(stats):\n    return {"size_bytes": stats.n, "other": 1}\n')
    (tmp_path / "results.py").write_text('SIZE = "size_bytes"\n')
    assert quoted_field_names(tmp_path, record_field_names(), tmp_path / "results.py") == \
        ["tracker.py:2: size_bytes"]


def test_the_readme_documents_every_result_field():
    from compresslab.results import CaseResult

    readme = (SRC.parent / "README.md").read_text()
    section = readme[readme.index("## What a case records"):readme.index("## Floors")]
    missing = [f.name for f in dataclasses.fields(CaseResult) if f"`{f.name}`" not in section]
    assert not missing, f"README's 'What a case records' does not list {missing}"
