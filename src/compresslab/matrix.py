"""Which model x method cases a benchmark run parametrizes: the registry default or COMPRESSLAB_MATRIX."""

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
        matrix[model_id] = chain_ids
    if not matrix:
        raise ValueError(f"{ENV} is set but names no cases")
    return matrix


def selected_matrix() -> dict[str, tuple[str, ...]]:
    from compresslab import registry

    text = os.environ.get(ENV)
    return parse_matrix(text, registry.MODELS, registry.METHODS) if text else dict(registry.DEFAULT_MATRIX)
