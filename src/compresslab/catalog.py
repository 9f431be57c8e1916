"""What a run can benchmark: models, tasks and methods by id, the matrix of cases, and where it was
declared. compresslab's own registry is one catalog (registry.builtin_catalog); a project's
``[tool.compresslab]`` config is another, built over it (project.py). Every reader of ids (the
plugin, the session, the case runner, the CLI) asks the run's catalog, never the registry directly,
so a user's model is a first-class citizen without a fork.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

BASELINE_METHOD = "fp32"  # every model's uncompressed reference: the ratios and recoveries divide by it


def unknown(kind: str, name: str, valid) -> KeyError:
    return KeyError(f"unknown {kind} {name!r}; valid: {', '.join(sorted(valid))}")


@dataclass(frozen=True)
class Catalog:
    models: Mapping[str, Any]  # id -> models.spec.ModelSpec
    tasks: Mapping[str, Any]  # id -> a tasks.base.Task
    methods: Mapping[str, Any]  # id -> a methods.base.Method
    # every case of the full matrix, per model: chains of method ids
    matrix: Mapping[str, tuple[str, ...]]
    # True: the registry's matrix, whose tiers (smoke, default, full) a run selects from; False: a
    # project's own list, which runs as given (unless --compresslab-tier says otherwise)
    tiered: bool
    source: str  # where it was declared: "compresslab's registry", or the project's config file and table
    # floors tables in floors.toml's vocabulary, merged over the default floors (a project's own)
    floors: Mapping[str, Any] = field(default_factory=dict)
    floors_source: str | None = None
    baseline_method: str = BASELINE_METHOD

    def get_model(self, model_id: str) -> Any:
        if model_id not in self.models:
            raise unknown("model", model_id, self.models)
        return self.models[model_id]

    def get_method(self, method_id: str) -> Any:
        if method_id not in self.methods:
            raise unknown("method", method_id, self.methods)
        return self.methods[method_id]

    def family_of(self) -> dict[str, str]:
        return {name: method.family for name, method in self.methods.items()}

    def model_tasks(self, spec: Any) -> list[Any]:
        return [self.tasks[name] for name in spec.tasks]

    def expected_metrics(self, spec: Any) -> dict[str, str]:
        """{metric: task id} of every metric the model's tasks must produce."""
        return {metric: task.id for task in self.model_tasks(spec) for metric in task.metrics}
