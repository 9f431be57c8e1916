"""A project's own compresslab configuration: its models, the tasks that judge them (on its own
data), the matrix of cases and its floors, declared in the project's repository instead of a fork.

Found in pytest's rootdir (the CLI: the current directory): a ``compresslab.toml``, or the
``[tool.compresslab]`` table of ``pyproject.toml`` (not both). A repository without either gets
compresslab's registry: the embedded models and the tiered default matrix.

    [tool.compresslab.models.my-classifier]
    path = "checkpoints/my-classifier"   # a checkpoint directory or a .gguf file (relative to this file)
    # hub = "org/name"; revision = "main"  # instead of path
    kind = "classifier"                  # classifier | multilabel-classifier | causal-lm
    tasks = ["my-sentiment"]             # tasks below, or built-in task ids

    [tool.compresslab.tasks.my-sentiment] # see tasks/dataset.py for the keys
    type = "classification"
    test = "data/test.csv"

    [tool.compresslab.matrix]            # method ids and chains per model (default: the model kind's
    my-classifier = ["fp32", "int8-dynamic", "distill-half+int8-dynamic"]  # default tier)

    [tool.compresslab.floors.family.int8]  # floors.toml's vocabulary, over compresslab's default floors
    min_recovery = { accuracy = 0.99 }

Every error is one line that names the file, the key and the valid values (errors.ConfigError),
raised before anything builds.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compresslab.errors import ConfigError

CONFIG_FILE, PYPROJECT = "compresslab.toml", "pyproject.toml"
SECTIONS = ("models", "tasks", "matrix", "floors")
MODEL_KEYS = ("path", "hub", "revision", "kind", "tasks", "dtype", "latency_seq_len", "description")
# the kind a user declares -> the architecture compresslab builds and loads (a multi-label classifier
# is a sequence classifier whose head is read through a sigmoid) and the task types that can judge it
KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "classifier": ("classifier", ("classification",)),
    "multilabel-classifier": ("classifier", ("multilabel",)),
    "causal-lm": ("causal-lm", ("perplexity", "lm")),
}
# The baseline every recovery and ratio divides by is fp32; lower precisions are rows of the matrix.
DTYPES = ("float32",)
# ids appear in test ids, -k expressions, chains ("+") and COMPRESSLAB_MATRIX (":", ",", ";")
ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]*")


@dataclass(frozen=True)
class ConfigFile:
    path: Path
    table: dict[str, Any]  # the compresslab table: the whole compresslab.toml, or pyproject's [tool.compresslab]
    prefix: str  # how its tables are named in messages: "tool.compresslab." or ""

    def where(self, *keys: str) -> str:
        """``pyproject.toml [tool.compresslab.models.x]``: the place an error points at."""
        if keys:
            return f"{self.path.name} [{self.prefix}{'.'.join(keys)}]"
        return f"{self.path.name} [{self.prefix.rstrip('.')}]" if self.prefix else self.path.name


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path.name}: not valid TOML: {err}") from None
    except OSError as err:
        raise ConfigError(f"{path}: {err.strerror or err}") from None


def find(rootdir: Path, explicit: Path | None = None) -> ConfigFile | None:
    """The project's config in ``rootdir`` (or the file given), or None when it declares none."""
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"--compresslab-config {explicit}: no such file")
        return _config_in(explicit)
    own, pyproject = rootdir / CONFIG_FILE, rootdir / PYPROJECT
    found = [config for config in (_config_in(own) if own.is_file() else None,
                                   _config_in(pyproject) if pyproject.is_file() else None) if config]
    if len(found) == 2:
        raise ConfigError(f"both {CONFIG_FILE} and {PYPROJECT} [tool.compresslab] configure compresslab; "
                          "keep one")
    return found[0] if found else None


def _config_in(path: Path) -> ConfigFile | None:
    data = _read_toml(path)
    if path.name != PYPROJECT:
        return ConfigFile(path, data, "")
    table = data.get("tool", {}).get("compresslab")
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ConfigError(f"{path.name} [tool.compresslab] must be a table")
    return ConfigFile(path, table, "tool.compresslab.")


def load_catalog(rootdir: Path, explicit: Path | None = None):
    """The run's catalog: the project's config over compresslab's registry, or the registry alone."""
    from compresslab import registry

    config = find(Path(rootdir), explicit)
    return registry.builtin_catalog() if config is None else project_catalog(config)


def project_catalog(config: ConfigFile):
    from compresslab import registry
    from compresslab.catalog import Catalog

    _check_keys(config.table, SECTIONS, config, ())
    base_dir = config.path.parent
    tasks = {**registry.TASKS, **_tasks(config, base_dir)}
    models = {**registry.MODELS, **_models(config, base_dir, tasks)}
    matrix = _matrix(config, models, registry)
    floors, floors_source = _floors(config, base_dir)
    if not matrix:  # a config of floors only: the registry's tiered matrix, judged by those floors
        return Catalog(models, tasks, registry.METHODS, dict(registry.FULL_MATRIX), tiered=True,
                       source=config.where(), floors=floors, floors_source=floors_source)
    return Catalog(models, tasks, registry.METHODS, matrix, tiered=False, source=config.where(),
                   floors=floors, floors_source=floors_source)


def _check_keys(table: Mapping[str, Any], valid: tuple[str, ...], config: ConfigFile, where: tuple[str, ...]) -> None:
    unknown = sorted(set(table) - set(valid))
    if unknown:
        raise ConfigError(f"{config.where(*where)}: unknown key(s) {', '.join(unknown)}; "
                          f"valid: {', '.join(dict.fromkeys(valid))}")


def _section(config: ConfigFile, name: str) -> dict[str, Any]:
    section = config.table.get(name, {})
    if not isinstance(section, dict):
        raise ConfigError(f"{config.where(name)} must be a table, got {type(section).__name__}")
    return section


def _check_id(config: ConfigFile, section: str, name: str) -> None:
    if not ID_PATTERN.fullmatch(name):
        raise ConfigError(f"{config.where(section, name)}: id {name!r} must be lowercase letters, digits, "
                          "'.', '_' or '-' (it appears in test ids and -k expressions)")


# --- tasks ---------------------------------------------------------------------------------------------


def _tasks(config: ConfigFile, base_dir: Path) -> dict[str, Any]:
    from compresslab import registry
    from compresslab.tasks.dataset import task_from_table

    tasks = {}
    for task_id, table in _section(config, "tasks").items():
        _check_id(config, "tasks", task_id)
        if task_id in registry.TASKS:
            raise ConfigError(f"{config.where('tasks', task_id)}: {task_id!r} is a built-in task; choose another "
                              f"id (built-in: {', '.join(sorted(registry.TASKS))})")
        if not isinstance(table, dict):
            raise ConfigError(f"{config.where('tasks', task_id)} must be a table")
        tasks[task_id] = task_from_table(task_id, table, config.where("tasks", task_id), base_dir)
    return tasks


def task_type(task: Any) -> str:
    """A task's type: a dataset task says it; the built-in ones are classification or lm."""
    return getattr(task, "task_type", task.kind)


# --- models --------------------------------------------------------------------------------------------


def _models(config: ConfigFile, base_dir: Path, tasks: Mapping[str, Any]) -> dict[str, Any]:
    from compresslab import registry

    models = {}
    for model_id, table in _section(config, "models").items():
        _check_id(config, "models", model_id)
        where = ("models", model_id)
        if model_id in registry.MODELS:
            raise ConfigError(f"{config.where(*where)}: {model_id!r} is a built-in model; choose another id "
                              f"(built-in: {', '.join(sorted(registry.MODELS))})")
        if not isinstance(table, dict):
            raise ConfigError(f"{config.where(*where)} must be a table")
        _check_keys(table, MODEL_KEYS, config, where)
        models[model_id] = _model(config, model_id, table, base_dir, tasks)
    return models


def _model(config: ConfigFile, model_id: str, table: dict[str, Any], base_dir: Path, tasks: Mapping[str, Any]):
    from compresslab.models.spec import ModelSpec

    where = config.where("models", model_id)
    declared = table.get("kind")
    if declared not in KINDS:
        raise ConfigError(f"{where} kind: {declared!r} is not a kind of model; valid: {', '.join(KINDS)}")
    kind, task_types = KINDS[declared]
    dtype = table.get("dtype", "float32")
    if dtype not in DTYPES:
        raise ConfigError(f"{where} dtype: {dtype!r}; valid: {', '.join(DTYPES)} (the baseline every ratio is "
                          "measured against is fp32; bf16 and the rest are rows of the matrix)")
    model_tasks = _model_tasks(where, table.get("tasks"), tasks, task_types, declared)
    seq_len = table.get("latency_seq_len", 128 if kind == "causal-lm" else 64)
    if not isinstance(seq_len, int) or isinstance(seq_len, bool) or not 1 <= seq_len <= 8192:
        raise ConfigError(f"{where} latency_seq_len: {seq_len!r} must be a whole number of tokens in 1..8192")
    source = _source(where, model_id, table, declared, kind, base_dir)
    description = table.get("description") or f"{declared} from {table.get('path') or table.get('hub')}"
    return ModelSpec(id=model_id, kind=kind, source=source, tasks=model_tasks, description=str(description),
                     latency_seq_len=seq_len)


def _model_tasks(where: str, names: Any, tasks: Mapping[str, Any], task_types: tuple[str, ...],
                 declared: str) -> tuple[str, ...]:
    if not isinstance(names, list) or not names or not all(isinstance(name, str) for name in names):
        raise ConfigError(f"{where} tasks: {names!r} must be a non-empty list of task ids; "
                          f"valid: {', '.join(sorted(tasks))}")
    emitted: dict[str, str] = {}
    for name in names:
        if name not in tasks:
            raise ConfigError(f"{where} tasks: unknown task {name!r}; valid: {', '.join(sorted(tasks))}")
        if task_type(tasks[name]) not in task_types:
            raise ConfigError(f"{where} tasks: {name!r} is a {task_type(tasks[name])} task, which cannot judge a "
                              f"{declared}; valid types: {', '.join(task_types)}")
        for metric in tasks[name].metrics:  # one value per metric name in a case's record
            if metric in emitted:
                raise ConfigError(f"{where} tasks: {emitted[metric]!r} and {name!r} both measure {metric}; "
                                  "judge the model on one of them")
            emitted[metric] = name
    return tuple(names)


def _source(where: str, model_id: str, table: dict[str, Any], declared: str, kind: str, base_dir: Path):
    from compresslab.models.checkpoint import MULTI_LABEL, GGUFCheckpoint, LocalCheckpoint
    from compresslab.models.hub import HubModel

    problem_type = MULTI_LABEL if declared == "multilabel-classifier" else None
    if ("path" in table) == ("hub" in table):
        raise ConfigError(f"{where}: give exactly one of path (a checkpoint directory or .gguf file) or hub "
                          "(a Hugging Face id)")
    if "hub" in table:
        hub, revision = table["hub"], table.get("revision", "main")
        if not isinstance(hub, str) or hub.count("/") != 1 or not isinstance(revision, str):
            raise ConfigError(f"{where} hub: {hub!r} must be a Hugging Face id such as 'org/name' "
                              "(revision: a branch, tag or commit)")
        return HubModel(model_id, hub, kind, revision, problem_type)
    if "revision" in table:
        raise ConfigError(f"{where} revision: only a hub model has a revision")
    path = (base_dir / str(table["path"])).resolve()
    if path.suffix == ".gguf":
        if declared != "causal-lm":
            raise ConfigError(f"{where} path: a GGUF file holds a causal LM; kind is {declared!r}")
        if not path.is_file():
            raise ConfigError(f"{where} path: {table['path']} does not exist")
        return GGUFCheckpoint(model_id, path)
    if not (path / "config.json").is_file():
        what = "does not exist" if not path.exists() else "has no config.json (not a checkpoint directory)"
        raise ConfigError(f"{where} path: {table['path']} {what}; expected a save_pretrained directory or a "
                          ".gguf file")
    return LocalCheckpoint(model_id, path, kind, problem_type)


# --- the matrix and floors -------------------------------------------------------------------------------


def _matrix(config: ConfigFile, models: Mapping[str, Any], registry) -> dict[str, tuple[str, ...]]:
    """The project's cases: its [matrix], or each of its models with its kind's default tier."""
    from compresslab.pipeline import parse_chain

    section = _section(config, "matrix")
    own_models = [model_id for model_id in models if model_id not in registry.MODELS]
    if not section:
        return {model_id: registry.DEFAULT_TIER[models[model_id].kind] for model_id in own_models}
    matrix = {}
    for model_id, chains in section.items():
        where = config.where("matrix")
        if model_id not in models:
            raise ConfigError(f"{where} {model_id}: unknown model; valid: {', '.join(sorted(models))}")
        if not isinstance(chains, list) or not chains or not all(isinstance(c, str) for c in chains):
            raise ConfigError(f"{where} {model_id}: {chains!r} must be a non-empty list of method ids or chains "
                              "such as 'distill-half+int8-dynamic'")
        for chain in chains:
            try:
                parse_chain(chain, registry.METHODS)
            except (KeyError, ValueError) as err:
                raise ConfigError(f"{where} {model_id}: {err.args[0]}") from None
        repeated = sorted({c for c in chains if chains.count(c) > 1})
        if repeated:
            raise ConfigError(f"{where} {model_id}: lists {', '.join(repeated)} more than once")
        matrix[model_id] = tuple(chains)
    return matrix


def _floors(config: ConfigFile, base_dir: Path) -> tuple[dict[str, Any], str | None]:
    """The project's floors tables, inline or in a floors file it names: checked in full later, against
    the catalog's models and methods (floors.load_layers), with this place in every message."""
    floors = config.table.get("floors")
    if floors is None:
        return {}, None
    if isinstance(floors, str):
        path = base_dir / floors
        if not path.is_file():
            raise ConfigError(f"{config.where()} floors: {floors} does not exist")
        return _read_toml(path), str(Path(floors))
    if not isinstance(floors, dict):
        raise ConfigError(f"{config.where()} floors: a table in floors.toml's vocabulary or the name of a floors "
                          f"file, got {type(floors).__name__}")
    return floors, config.where("floors")
