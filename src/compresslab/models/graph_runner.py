"""Runner of an exported graph (ONNX Runtime or OpenVINO): the same ``logits(inputs)`` the tasks
and the timer call on eager PyTorch, plus the ``start``/``step`` decode loop of a decoder.

Inputs a graph needs but the task does not give are made here, never by the benchmark:
token_type_ids and attention_mask of an encoder; position_ids and the KV cache (``past.*``,
zero-length for a prefill, the previous step's ``present.*`` afterwards) of a decoder, or
``beam_idx`` where OpenVINO keeps that cache as state (models/ov_stateful.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compresslab.models.backends import BACKENDS
from compresslab.models.ov_stateful import BEAM_INPUT, PAST_PREFIX
from compresslab.models.spec import ModelKind

RUNTIME_FILE = "compresslab_runtime.json"  # which runtime and file an exported artifact ships
# runtimes with a runner of their own rather than a graph backend (runner.load_runner dispatches them)
OWN_RUNNERS = ("llama.cpp",)


def runtime_of(artifact: Path) -> dict[str, Any] | None:
    marker = Path(artifact) / RUNTIME_FILE
    return json.loads(marker.read_text()) if marker.is_file() else None


def write_runtime(out: Path, runtime: str, model_file: str, **details: Any) -> None:
    if runtime not in (*BACKENDS, *OWN_RUNNERS):
        raise ValueError(f"unknown runtime {runtime!r}; known: {', '.join((*BACKENDS, *OWN_RUNNERS))}")
    (Path(out) / RUNTIME_FILE).write_text(json.dumps({"runtime": runtime, "model": model_file, **details}, indent=1))


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy()


@dataclass(frozen=True)
class CacheState:
    """A decode loop's state between steps: how many tokens the KV cache holds, and the cache
    tensors where they travel between calls (numpy arrays, or ORT values that stay on the device);
    none where the cache lives inside the compiled model (OpenVINO's stateful form)."""

    length: int
    tensors: tuple = ()


def cache_length(tensors) -> int:
    if not tensors:
        return 0
    shape = tensors[0].shape
    return int((shape() if callable(shape) else shape)[2])  # an ORT value's shape is a method


@dataclass
class GraphRunner:
    backend: Any  # models.backends.OrtBackend | OpenVinoBackend
    tokenizer: Any
    device: str
    kind: ModelKind
    model: None = None  # no torch module: module-level trackers (sparsity) do not apply
    past_names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.past_names = tuple(n for n in self.backend.input_names if n.startswith(PAST_PREFIX))

    @property
    def is_causal_lm(self) -> bool:
        return self.kind == "causal-lm"

    @property
    def settings(self) -> dict[str, Any]:
        return self.backend.settings

    def empty_past(self, batch: int) -> list[np.ndarray]:
        """Zero-length cache tensors, shaped [batch, kv heads, 0, head dim] from the graph's inputs
        (none for a graph that keeps its cache as state)."""
        past = []
        for name in self.past_names:
            _, heads, _, head_dim = self.backend.input_shapes[name]
            past.append(np.zeros((batch, heads, 0, head_dim), dtype=np.float32))
        return past

    def feeds(self, inputs: dict[str, torch.Tensor], past: list | tuple | None = None,
              past_len: int | None = None) -> dict[str, Any]:
        """The graph's feeds for ``inputs`` after a cache of ``past_len`` tokens (by default the
        length of the ``past`` tensors given, or of an empty cache)."""
        ids = inputs["input_ids"]
        past = past if past is not None else self.empty_past(ids.shape[0])
        past_len = cache_length(past) if past_len is None else past_len
        made = {
            "token_type_ids": lambda: np.zeros(tuple(ids.shape), dtype=np.int64),
            "attention_mask": lambda: np.ones((ids.shape[0], past_len + ids.shape[1]), dtype=np.int64),
            # as eager PyTorch without position_ids: positions continue after the cache
            "position_ids": lambda: np.broadcast_to(np.arange(past_len, past_len + ids.shape[1]),
                                                    tuple(ids.shape)).copy(),
            # a stateful graph's cache rows to continue from: each row its own (no beam reordering)
            BEAM_INPUT: lambda: np.arange(ids.shape[0], dtype=np.int32),
        }
        feeds = dict(zip(self.past_names, past))
        for name in self.backend.input_names:
            if name in feeds:
                continue
            if name in inputs:
                feeds[name] = _numpy(inputs[name])
            elif name in made:
                feeds[name] = made[name]()
            else:
                raise ValueError(f"the exported graph needs input {name!r}, which the task does not provide; "
                                 f"graph inputs: {', '.join(self.backend.input_names)}")
        return feeds

    def logits(self, inputs: dict[str, torch.Tensor], keep_last: int | None = None) -> torch.Tensor:
        """One whole sequence per call, from an empty cache."""
        logits = torch.from_numpy(self.backend.run(self.feeds(inputs))[0])
        return logits[:, -keep_last:] if keep_last is not None and logits.dim() == 3 else logits

    @property
    def can_specialize(self) -> bool:
        """Whether one static-shape compile can serve a timed call (not a decoder: its cache grows)."""
        return not self.is_causal_lm and hasattr(self.backend, "specialize")

    def specialize(self, inputs: dict[str, torch.Tensor]) -> None:
        """Compile the graph for exactly these inputs' shapes too (the timed workload); every other
        shape, the evaluation's included, still runs on the dynamic graph. Recorded in settings."""
        if not self.can_specialize:
            raise ValueError(f"a {self.kind} graph on {self.settings['runtime']} is not compiled for static shapes")
        self.backend.specialize(self.feeds(inputs))

    # The decode loop (batch 1 or equal-length rows): the backend keeps the cache the way its runtime
    # would ship (OpenVINO: as state inside the model; ONNX Runtime on CUDA: as ORT values bound to the next
    # call, on the CPU as numpy arrays).
    def start(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, CacheState]:
        return self.step(input_ids, None)  # a prefill is a step from the empty cache

    def step(self, token_ids: torch.Tensor, state: CacheState | None) -> tuple[torch.Tensor, CacheState]:
        if state is None:
            state = CacheState(0, tuple(self.empty_past(token_ids.shape[0])))
        feeds = self.feeds({"input_ids": token_ids}, past=state.tensors, past_len=state.length)
        logits, cache = self.backend.run_cached(feeds, new_sequence=state.length == 0)
        return torch.from_numpy(logits[:, -1]), CacheState(state.length + token_ids.shape[1], tuple(cache))


def load_graph_runner(artifact: Path, tokenizer, kind: ModelKind, device: str, runtime: dict[str, Any]) -> GraphRunner:
    name = runtime["runtime"]
    if name not in BACKENDS:
        raise ValueError(f"{Path(artifact) / RUNTIME_FILE}: unknown runtime {name!r}; known: {', '.join(BACKENDS)}")
    threads = torch.get_num_threads()  # pinned by the suite to --compresslab-threads, as for PyTorch
    # the precision an OpenVINO artifact ships with (its row's choice: f32, or bf16 where the CPU has it)
    options = {"precision": runtime["precision_hint"]} if name == "openvino" and "precision_hint" in runtime else {}
    backend = BACKENDS[name](Path(artifact) / runtime["model"], device, threads, **options)
    if "fused_operators" in runtime:  # a graph rewritten by ORT's transformer optimizer (methods/ort_fused.py)
        backend.settings["fused_operators"] = runtime["fused_operators"]
    return GraphRunner(backend, tokenizer, device, kind)
