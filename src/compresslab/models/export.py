"""Export a checkpoint to one ONNX graph that ONNX Runtime runs and OpenVINO converts.

The exporter is torch.onnx's dynamo exporter (``torch.export``): on BERT the legacy TorchScript
exporter bakes the traced sequence length into the attention-mask arithmetic, and its graph
disagrees with eager PyTorch at other lengths (max |logit error| 0.012 on a tiny BERT, against
4e-9 for the dynamo graph; see tests/test_onnx_export.py).

A decoder is exported with its KV cache as explicit inputs and outputs (``past.<layer>.key`` ->
``present.<layer>.key``), so one graph serves the prefill (a zero-length past) and every decode
step; the runner feeds each step's presents back as the next step's past.
"""

from __future__ import annotations

from pathlib import Path

import torch

OPSET = 18
SAMPLE_TEXTS = ("a sample text to trace the graph", "and a second, longer sample text of a few more words")
DECODER_INPUTS = ("input_ids", "attention_mask", "position_ids")
# protobuf caps one file at 2 GB: larger models keep their weights in ``<model>.onnx.data`` beside it
EXTERNAL_DATA_BYTES = 1_500_000_000


def needs_external_data(model: torch.nn.Module) -> bool:
    return sum(p.numel() * p.element_size() for p in model.parameters()) > EXTERNAL_DATA_BYTES


def past_names(n_layers: int) -> list[str]:
    return [f"past.{layer}.{part}" for layer in range(n_layers) for part in ("key", "value")]


def present_names(n_layers: int) -> list[str]:
    return [f"present.{layer}.{part}" for layer in range(n_layers) for part in ("key", "value")]


def export_classifier(model: torch.nn.Module, tokenizer, path: Path) -> None:
    """Dynamic batch and sequence axes, traced on a padded batch of two."""
    # truncated too: a small (trimmed) vocabulary splits the sample words into more pieces
    sample = dict(tokenizer(list(SAMPLE_TEXTS), padding="max_length", truncation=True, max_length=32,
                            return_tensors="pt"))
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=512)
    program = torch.onnx.export(model, (), kwargs=sample, input_names=list(sample), output_names=["logits"],
                                dynamic_shapes={name: {0: batch, 1: seq} for name in sample},
                                dynamo=True, opset_version=OPSET, verbose=False)
    program.save(str(path), external_data=needs_external_data(model))


class DecoderWithCache(torch.nn.Module):
    """The causal LM with its cache flattened to tensors: (ids, mask, positions, past...) ->
    (logits, presents...). The cache object lives only inside the traced forward."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.n_layers = model.config.num_hidden_layers

    def forward(self, input_ids, attention_mask, position_ids, past: list[torch.Tensor]):
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        for layer in range(self.n_layers):
            cache.update(past[2 * layer], past[2 * layer + 1], layer)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True)
        presents = [tensor for layer in out.past_key_values.layers for tensor in (layer.keys, layer.values)]
        return (out.logits, *presents)


def kv_shape(config) -> tuple[int, int]:
    """(key/value heads, head dim) of one layer's cache."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return getattr(config, "num_key_value_heads", None) or config.num_attention_heads, head_dim


def export_decoder(model: torch.nn.Module, path: Path) -> None:
    """Traced on batch 2, 5 new tokens after a 3-token past; every axis but heads and head dim is
    dynamic (``Dim.AUTO`` lets torch.export find that the mask spans past + new tokens). A
    zero-length past (the prefill) runs on the same graph (tested)."""
    wrapper = DecoderWithCache(model).eval()
    n_layers = wrapper.n_layers
    heads, head_dim = kv_shape(model.config)
    batch, past_len, new = 2, 3, 5
    generator = torch.Generator().manual_seed(0)
    past = [torch.randn(batch, heads, past_len, head_dim, generator=generator) for _ in range(2 * n_layers)]
    sample = {"input_ids": torch.randint(0, model.config.vocab_size, (batch, new), generator=generator),
              "attention_mask": torch.ones(batch, past_len + new, dtype=torch.long),
              "position_ids": torch.arange(past_len, past_len + new).expand(batch, -1).contiguous(),
              "past": past}
    auto = torch.export.Dim.AUTO
    dynamic = {name: {0: auto, 1: auto} for name in DECODER_INPUTS}
    dynamic["past"] = [{0: auto, 2: auto} for _ in past]
    program = torch.onnx.export(wrapper, (), kwargs=sample, dynamic_shapes=dynamic, dynamo=True, opset_version=OPSET,
                                input_names=[*DECODER_INPUTS, *past_names(n_layers)],
                                output_names=["logits", *present_names(n_layers)], verbose=False)
    program.save(str(path), external_data=needs_external_data(model))


def export_graph(model: torch.nn.Module, kind: str, tokenizer, path: Path) -> None:
    with torch.no_grad():
        if kind == "causal-lm":
            export_decoder(model, path)
        else:
            export_classifier(model, tokenizer, path)
