"""Which model x method cases a benchmark run parametrizes (the registry's full matrix, or
COMPRESSLAB_MATRIX) and the tier each case belongs to (smoke within default within full)."""

from __future__ import annotations

import os

from compresslab.pipeline import parse_chain

ENV = "COMPRESSLAB_MATRIX"


def parse_matrix(text: str, models, methods) -> dict[str, tuple[str, ...]]:
    """``"minilm-sentiment:fp32,int8-dynamic;smollm2-135m:fp32"`` -> {model: (chain, ...)}."""
    matrix: dict[str, tuple[str, ...]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        model_id, sep, chains = part.partition(":")
        model_id = model_id.strip()
        if not sep or not chains.strip():
            raise ValueError(f"{ENV}: {part!r} should read 'model:method[,method...]'")
        if model_id not in models:
            raise KeyError(f"{ENV}: unknown model {model_id!r}; valid: {', '.join(sorted(models))}")
        chain_ids = tuple(c.strip() for c in chains.split(","))
        for chain_id in chain_ids:
            parse_chain(chain_id, methods)
        if model_id in matrix:  # a second entry would silently replace the first
            raise ValueError(f"{ENV}: model {model_id!r} appears twice; list its methods once, "
                             f"e.g. '{model_id}:{','.join((*matrix[model_id], *chain_ids))}'")
        repeated = sorted({c for c in chain_ids if chain_ids.count(c) > 1})
        if repeated:
            raise ValueError(f"{ENV}: {model_id} lists {', '.join(repeated)} more than once")
        matrix[model_id] = chain_ids
    if not matrix:
        raise ValueError(f"{ENV} is set but names no cases")
    return matrix


def selected_matrix(catalog=None) -> dict[str, tuple[str, ...]]:
    """Every case a benchmark parametrizes: COMPRESSLAB_MATRIX when set, else the catalog's matrix
    (the registry's full matrix, whose tiers the run then selects from, or a project's own list)."""
    if catalog is None:
        from compresslab import registry

        catalog = registry.builtin_catalog()
    text = os.environ.get(ENV)
    return parse_matrix(text, catalog.models, catalog.methods) if text else dict(catalog.matrix)


def tier_of(model_id: str, chain_id: str, known_bad: bool) -> str:
    """The smallest tier that holds a case: smoke, default (its kind's default rows that the floors
    do not mark as a known failure) or full. A project's own models are in no tier but full."""
    from compresslab import registry

    if model_id not in registry.MODELS:
        return "full"
    if chain_id in registry.SMOKE_MATRIX.get(model_id, ()):
        return "smoke"
    kind = registry.MODELS[model_id].kind
    return "default" if chain_id in registry.DEFAULT_TIER.get(kind, ()) and not known_bad else "full"

