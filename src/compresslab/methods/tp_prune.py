"""Structured pruning of encoders and decoders with Torch-Pruning's dependency graph (DepGraph).

Torch-Pruning traces the model, groups every parameter coupled to a channel (a head's query, key
and value rows and its output-projection columns; an MLP channel's gate and up rows and its down
column) and removes whole groups, ranked by an importance criterion: the L2 magnitude of the
group's weights, or Taylor (weight times gradient of the task loss on a few training batches).
The same fraction goes in every block, so every block keeps one shape. Attention heads keep their
size (head_dim); in a grouped-query decoder Torch-Pruning removes the same number of query heads
from every key/value group and keeps the key/value heads, so the groups stay equal. The hidden size
(the residual stream) is not pruned. A distilled recovery (methods/structured.py) follows.

A decoder's checkpoint is plain transformers: config.json says the new head counts, head_dim and
intermediate size, and ``from_pretrained`` rebuilds it. A BERT-style encoder derives its head size
from hidden_size / num_attention_heads, which fewer heads of the same size break, so its checkpoint
also carries a structure map (models/structure.py) that rebuilds the reshaped modules.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from unittest import mock

import torch
from torch import nn

from compresslab.methods.base import Method, MethodUnsupported, StageContext
from compresslab.methods.distill import DEFAULT_BUDGET
from compresslab.methods.structured import CHANNEL_MULTIPLE, RECOVERY, distilled_recovery
from compresslab.methods.training import training_batches, write_record
from compresslab.models.finetune import TrainBudget
from compresslab.models.loading import load_pretrained
from compresslab.models.structure import attributes_entry, block_linears, block_list, linear_entry, save_structured

IMPORTANCE = ("magnitude", "taylor")
# BERT's self-attention computes these from config.json at build time; with fewer heads they are set again
BERT_ATTENTION_ATTRIBUTES = ("num_attention_heads", "attention_head_size", "all_head_size", "scaling")


@dataclass(frozen=True)
class Block:
    """One transformer block's prunable parts: the attention module, its query/key/value
    projections and the MLP's input projections (whose outputs are the MLP channels)."""

    attention: nn.Module
    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    mlp_in: tuple[nn.Linear, ...]


def block_parts(block: nn.Module) -> Block:
    """Llama-style (self_attn.q_proj/k_proj/v_proj, mlp.gate_proj/up_proj) or BERT-style
    (attention.self.query/key/value, intermediate.dense) blocks; others: MethodUnsupported."""
    attention = getattr(block, "self_attn", None)
    if attention is not None and hasattr(attention, "q_proj") and hasattr(block.mlp, "up_proj"):
        mlp_in = tuple(getattr(block.mlp, name) for name in ("gate_proj", "up_proj") if hasattr(block.mlp, name))
        return Block(attention, attention.q_proj, attention.k_proj, attention.v_proj, mlp_in)
    if hasattr(block, "attention") and hasattr(block, "intermediate"):
        attention = block.attention.self
        return Block(attention, attention.query, attention.key, attention.value, (block.intermediate.dense,))
    raise MethodUnsupported(f"Torch-Pruning structured pruning supports Llama-style decoders and BERT-style "
                            f"encoders, not {type(block).__name__} blocks")


def is_decoder_block(parts: Block) -> bool:
    return hasattr(parts.attention, "num_key_value_groups")


def head_dim(model: nn.Module) -> int:
    """The size of one attention head, as the first block's attention module computes with it."""
    attention = block_parts(block_list(model)[1][0]).attention
    return getattr(attention, "head_dim", None) or attention.attention_head_size


def example_inputs(model: nn.Module) -> dict[str, torch.Tensor]:
    """A short input for Torch-Pruning's trace (the coupling of channels does not depend on it)."""
    return {"input_ids": torch.arange(1, 9).remainder(model.config.vocab_size).unsqueeze(0)}


def rotary_disabled(attention: nn.Module):
    """Rotary embeddings rotate within a head; traced, their slices and concatenation make
    Torch-Pruning's graph walk loop. Heads keep their size here, so the trace runs without them."""
    module = sys.modules[type(attention).__module__]
    if not hasattr(module, "apply_rotary_pos_emb"):
        return contextlib.nullcontext()
    return mock.patch.object(module, "apply_rotary_pos_emb", lambda q, k, *args, **kwargs: (q, k))


def accumulate_taylor_gradients(model: nn.Module, ctx: StageContext, budget: TrainBudget, batches: int) -> None:
    """Gradients of the model's own loss on ``batches`` training batches, for Taylor importance."""
    model.zero_grad()
    for _, batch in zip(range(batches), training_batches(ctx, budget.for_kind(ctx.kind))):
        model(**batch).loss.backward()


def prune_with_torch_pruning(model: nn.Module, fraction: float, importance: str,
                             gradients: Callable[[], None] | None = None) -> dict[str, Any]:
    """Remove ``fraction`` of every block's attention heads and MLP channels in place (Torch-Pruning's
    BasePruner, local ranking); returns the kept counts. ``gradients()`` fills .grad (Taylor)."""
    import torch_pruning as tp

    parts = [block_parts(block) for block in block_list(model)[1]]
    config = model.config
    n_heads = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", n_heads)
    size = head_dim(model)
    ffn = parts[0].mlp_in[0].out_features
    num_heads, ratios = {}, {}
    for part in parts:
        num_heads[part.query] = n_heads
        num_heads[part.key] = num_heads[part.value] = n_kv
        for linear in (part.query, part.key, part.value, *part.mlp_in):
            ratios[linear] = fraction  # everything else (the hidden size, the task head) keeps its width
    criterion = tp.importance.GroupTaylorImportance() if importance == "taylor" else \
        tp.importance.GroupMagnitudeImportance(p=2)
    implementation = config._attn_implementation
    model.set_attn_implementation("eager")  # fused attention kernels hide the per-head structure from the trace
    try:
        with rotary_disabled(parts[0].attention), warnings.catch_warnings():
            # the norms' weights: Torch-Pruning would cut them along the hidden size, which stays whole
            warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
            pruner = tp.pruner.BasePruner(
                model, example_inputs=example_inputs(model), importance=criterion, global_pruning=False,
                pruning_ratio=0.0, pruning_ratio_dict=ratios, num_heads=num_heads, prune_num_heads=True,
                prune_head_dims=False, head_pruning_ratio=fraction, round_to=CHANNEL_MULTIPLE,
                ignored_layers=[m for m in (model.get_output_embeddings(),) if m is not None],
                output_transform=lambda out: out.logits)
        if gradients is not None:  # with the rotary embeddings: the real model's loss
            gradients()
        for group in pruner.step(interactive=True):
            group.prune()
        model.zero_grad(set_to_none=True)
    finally:
        model.set_attn_implementation(implementation)
    kept_heads = parts[0].query.out_features // size
    kept_kv = parts[0].key.out_features // size
    kept_ffn = parts[0].mlp_in[0].out_features
    shapes = {(p.query.out_features, p.key.out_features, p.value.out_features, p.mlp_in[0].out_features)
              for p in parts}
    if len(shapes) != 1:
        raise RuntimeError(f"Torch-Pruning left blocks of different shapes {sorted(shapes)}; expected one per model")
    config.num_attention_heads = kept_heads
    config.intermediate_size = kept_ffn
    for part in parts:
        if is_decoder_block(part):
            part.attention.num_key_value_groups = kept_heads // kept_kv
        else:
            part.attention.num_attention_heads = kept_heads
            part.attention.all_head_size = kept_heads * size
    if hasattr(config, "num_key_value_heads"):
        config.num_key_value_heads = kept_kv
    if is_decoder_block(parts[0]):
        config.head_dim = size  # explicit: hidden_size // num_attention_heads no longer is
    return {"heads": [n_heads, kept_heads], "kv_heads": [n_kv, kept_kv], "head_dim": size, "ffn": [ffn, kept_ffn]}


def block_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in block_list(model)[1].parameters())


def check_really_shrank(pruned: nn.Module, original: nn.Module, fraction: float) -> None:
    """Raises ValueError unless ``pruned`` has fewer heads and MLP channels than ``original``, its
    config describes its tensors, and its blocks lost at least half of ``fraction`` of their parameters."""
    config, before = pruned.config, original.config
    size = head_dim(pruned)
    problems = []
    if config.num_attention_heads >= before.num_attention_heads or config.intermediate_size >= before.intermediate_size:
        problems.append(f"heads {before.num_attention_heads} -> {config.num_attention_heads}, MLP channels "
                        f"{before.intermediate_size} -> {config.intermediate_size}")
    n_kv = getattr(config, "num_key_value_heads", config.num_attention_heads)
    for index, block in enumerate(block_list(pruned)[1]):
        part = block_parts(block)
        shapes = (part.query.out_features, part.key.out_features, part.value.out_features,
                  *(linear.out_features for linear in part.mlp_in))
        expected = (config.num_attention_heads * size, n_kv * size, n_kv * size,
                    *(config.intermediate_size for _ in part.mlp_in))
        if shapes != expected:
            problems.append(f"block {index}: q/k/v/MLP widths {shapes}, the config says {expected}")
    if config.num_attention_heads % n_kv:
        problems.append(f"{config.num_attention_heads} query heads do not split into {n_kv} key/value groups")
    kept = block_parameters(pruned) / block_parameters(original)
    if kept > 1 - fraction / 2:
        problems.append(f"the blocks keep {kept:.1%} of their parameters (pruning {fraction:.0%} should leave "
                        f"at most {1 - fraction / 2:.0%})")
    if problems:
        raise ValueError("the pruned checkpoint did not really shrink: " + "; ".join(problems))


def recovery_budget() -> TrainBudget:
    """structured.RECOVERY for a classifier; a decoder gets the layer-drop distillation's LM budget."""
    return TrainBudget(classifier=RECOVERY, causal_lm=DEFAULT_BUDGET.causal_lm)


@dataclass(frozen=True)
class TorchPruningPrune(Method):
    fraction: float = 0.3  # of the attention heads and of the MLP channels of every block
    importance: str = "magnitude"
    taylor_batches: int = 4  # training batches whose gradients rank channels (importance="taylor")
    temperature: float = 2.0
    alpha: float = 0.5
    recovery: TrainBudget = field(default_factory=recovery_budget)
    family: ClassVar[str] = "prune-struct"
    uses_task_data: ClassVar[bool] = True  # the recovery (and Taylor importance) train on the task's data
    requires_packages: ClassVar[tuple[str, ...]] = ("torch_pruning",)

    def __post_init__(self) -> None:
        if not 0 < self.fraction < 1:
            raise ValueError(f"TorchPruningPrune.fraction must be in (0, 1), got {self.fraction}")
        if self.importance not in IMPORTANCE:
            raise ValueError(f"TorchPruningPrune.importance must be one of {', '.join(IMPORTANCE)}, "
                             f"got {self.importance!r}")
        if self.taylor_batches < 1:
            raise ValueError(f"TorchPruningPrune.taylor_batches must be >= 1, got {self.taylor_batches}")

    def apply(self, src: Path, out: Path, ctx: StageContext) -> None:
        teacher = load_pretrained(src, ctx.kind, dtype=torch.float32)
        model = copy.deepcopy(teacher)  # the pruned student; the teacher stays whole
        block_parts(block_list(model)[1][0])  # an unsupported architecture fails before any work
        gradients = (lambda: accumulate_taylor_gradients(model, ctx, self.recovery, self.taylor_batches)) \
            if self.importance == "taylor" else None
        counts = prune_with_torch_pruning(model, self.fraction, self.importance, gradients)
        check_really_shrank(model, teacher, self.fraction)
        record = distilled_recovery(model, teacher, ctx, self.recovery.for_kind(ctx.kind), self.temperature,
                                    self.alpha, f"{ctx.model_id}: Torch-Pruning {self.fraction:.0%}: recover")
        save_pruned(model, out)
        params = [sum(p.numel() for p in m.parameters()) for m in (teacher, model)]
        write_record(out, "tp_prune", {"importance": self.importance, **counts, "parameters": params,
                                       "recovery": record})


def save_pruned(model: nn.Module, out: Path) -> None:
    """A decoder as a plain checkpoint; an encoder with the structure map its attention needs."""
    parts = [block_parts(block) for block in block_list(model)[1]]
    if is_decoder_block(parts[0]):
        model.save_pretrained(out)
        return
    names = {module: name for name, module in model.named_modules()}
    modules = {name: linear_entry(linear) for name, linear in block_linears(model).items()}
    for part in parts:
        modules[names[part.attention]] = attributes_entry(part.attention, BERT_ATTENTION_ATTRIBUTES)
    save_structured(model, out, modules)
