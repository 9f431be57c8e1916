"""Which modules stay in full precision when a method quantizes or sparsifies a model: one rule
for every method (the role torchao's ``filter_fn`` plays for one library).

The rule: the task head stays in full precision. It is tiny (a 3-way classifier head, or the
lm_head a small LM ties to its embedding), a low-bit head costs most of the accuracy for no
size, and several kernels cannot take a layer whose width is not a block multiple. A method
may keep more (``also``: module names, e.g. a decoder's ``down_proj`` whose activations int8
cannot hold), never less.

A name matches a module when it is a run of whole components of the module's qualified name:
``classifier`` keeps ``classifier``, ``roberta_head.classifier`` and everything inside a head
that is a module of its own (RoBERTa's ``classifier.dense`` and ``classifier.out_proj``);
``down_proj`` keeps ``model.layers.3.mlp.down_proj``, never ``down_proj_extra``.

Each library takes the rule in its own form, all built here so they cannot drift apart: a
plain name list (bitsandbytes' skip modules, transformers' modules_to_not_convert), shell
patterns (quanto's exclude), regular expressions (llm-compressor's ignore), a predicate over
(module, name) (torchao's filter_fn), or the list of Linears to convert. Methods that work on an
exported graph (ONNX Runtime, OpenVINO) apply ``stays_full_precision`` to the module path the
exporter records on each node.
"""

from __future__ import annotations

import re

from torch import nn

from compresslab.errors import MethodUnsupported
from compresslab.models.spec import ModelKind

# The task head's module names across the supported architectures: DistilBERT's pre_classifier
# and classifier, BERT's and RoBERTa's classifier, Llama-style score (sequence classification) and lm_head.
TASK_HEAD: dict[str, tuple[str, ...]] = {"classifier": ("pre_classifier", "classifier", "score"),
                                         "causal-lm": ("lm_head",)}


def full_precision_names(kind: ModelKind, also: tuple[str, ...] = ()) -> list[str]:
    """The names the rule keeps (the head's, then ``also``): the form of name-list APIs."""
    if kind not in TASK_HEAD:
        raise ValueError(f"unknown model kind {kind!r}; valid: {', '.join(TASK_HEAD)}")
    for name in also:
        if not name or name.startswith(".") or name.endswith("."):
            raise ValueError(f"full-precision module names are dotted module names, got {name!r}")
    return [*TASK_HEAD[kind], *also]


def stays_full_precision(name: str, kind: ModelKind, also: tuple[str, ...] = ()) -> bool:
    """True for a module (by its qualified name) that the rule keeps in full precision: it, or a
    module holding it, is named by the rule."""
    return any(f".{kept}." in f".{name}." for kept in full_precision_names(kind, also))


def quantizable_linears(model: nn.Module, kind: ModelKind, also: tuple[str, ...] = ()) -> list[tuple[str, nn.Linear]]:
    """The Linears a method converts: every nn.Linear the rule does not keep."""
    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and not stays_full_precision(name, kind, also)]


def linear_filter(kind: ModelKind, also: tuple[str, ...] = ()):
    """torchao's ``filter_fn(module, fqn) -> bool`` form of the rule: True converts the module."""
    def convert(module: nn.Module, fqn: str) -> bool:
        return isinstance(module, nn.Linear) and not stays_full_precision(fqn, kind, also)
    return convert


def shell_patterns(kind: ModelKind, also: tuple[str, ...] = ()) -> list[str]:
    """fnmatch patterns matching exactly the modules the rule keeps (optimum-quanto's ``exclude``,
    which matches whole qualified names)."""
    return [pattern for kept in full_precision_names(kind, also)
            for pattern in (kept, f"{kept}.*", f"*.{kept}", f"*.{kept}.*")]


def ignore_regexes(kind: ModelKind, also: tuple[str, ...] = ()) -> list[str]:
    """``re:``-prefixed patterns matching exactly the modules the rule keeps (llm-compressor's and
    compressed-tensors' ``ignore``, which apply ``re.match`` to qualified names)."""
    return [rf"re:(.*\.)?{re.escape(kept)}(\.|$)" for kept in full_precision_names(kind, also)]


def refuse_decoder_embedding_compression(embeddings: str | None, kind: ModelKind) -> None:
    """Raise MethodUnsupported when a method would compress a decoder's embedding table
    (``embeddings`` set): a small LM ties that table to its lm_head, which the rule keeps in
    full precision, so the graph methods' embedding compression is for classifiers only."""
    if embeddings and kind == "causal-lm":
        raise MethodUnsupported("a decoder's embedding is its output layer's weight if tied, and the head stays "
                                "in full precision: embedding compression applies to classifiers")
