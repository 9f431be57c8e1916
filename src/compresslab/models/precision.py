"""Which modules stay in full precision when a method quantizes or sparsifies a model: one rule
for every method (the role torchao's ``filter_fn`` plays for one library).

The rule: the task head stays in full precision. It is tiny (a 3-way classifier head, or the
lm_head a small LM ties to its embedding), a low-bit head costs most of the accuracy for no
size, and several kernels cannot take a layer whose width is not a block multiple. A method
may keep more (``also``: module-name suffixes, e.g. a decoder's ``down_proj`` whose activations
int8 cannot hold), never less. Each library takes the rule in its own form: a name list
(bitsandbytes' skip modules, quanto's exclude, transformers' modules_to_not_convert,
llmcompressor's ignore), a predicate over (module, name), or the list of Linears to convert.
"""

from __future__ import annotations

from torch import nn

from compresslab.models.spec import ModelKind

# The task head's module names across the supported architectures: DistilBERT's pre_classifier
# and classifier, BERT's classifier, Llama-style score (sequence classification) and lm_head.
TASK_HEAD: dict[str, tuple[str, ...]] = {"classifier": ("pre_classifier", "classifier", "score"),
                                         "causal-lm": ("lm_head",)}


def full_precision_names(kind: ModelKind, also: tuple[str, ...] = ()) -> list[str]:
    """Module names (last components) that stay in full precision, for name-list APIs."""
    if kind not in TASK_HEAD:
        raise ValueError(f"unknown model kind {kind!r}; valid: {', '.join(TASK_HEAD)}")
    return [*TASK_HEAD[kind], *also]


def stays_full_precision(name: str, kind: ModelKind, also: tuple[str, ...] = ()) -> bool:
    """True for a module (by its qualified name) that the rule keeps in full precision."""
    return name.rsplit(".", 1)[-1] in full_precision_names(kind, also)


def quantizable_linears(model: nn.Module, kind: ModelKind, also: tuple[str, ...] = ()) -> list[tuple[str, nn.Linear]]:
    """The Linears a method converts: every nn.Linear the rule does not keep."""
    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and not stays_full_precision(name, kind, also)]


def linear_filter(kind: ModelKind, also: tuple[str, ...] = ()):
    """torchao's ``filter_fn(module, fqn) -> bool`` form of the rule: True converts the module."""
    def convert(module: nn.Module, fqn: str) -> bool:
        return isinstance(module, nn.Linear) and not stays_full_precision(fqn, kind, also)
    return convert
