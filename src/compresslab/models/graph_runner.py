"""Runner of an exported graph (ONNX Runtime or OpenVINO): the same ``logits(inputs)`` the tasks
and the timer call on eager PyTorch, plus the ``start``/``step`` decode loop of a decoder.

Inputs a graph needs but the task does not give are made here, never by the benchmark:
token_type_ids and attention_mask of an encoder; position_ids and the KV cache (``past.*``,
zero-length for a prefill, the previous step's ``present.*`` afterwards) of a decoder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compresslab.models.backends import BACKENDS
from compresslab.models.spec import ModelKind

RUNTIME_FILE = "compresslab_runtime.json"  # which runtime and file an exported artifact ships
PAST_PREFIX = "past."


def runtime_of(artifact: Path) -> dict[str, Any] | None:
    marker = Path(artifact) / RUNTIME_FILE
    return json.loads(marker.read_text()) if marker.is_file() else None


def write_runtime(out: Path, runtime: str, model_file: str, **details: Any) -> None:
    if runtime not in BACKENDS:
        raise ValueError(f"unknown runtime {runtime!r}; known: {', '.join(BACKENDS)}")
    (Path(out) / RUNTIME_FILE).write_text(json.dumps({"runtime": runtime, "model": model_file, **details}, indent=1))


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy()


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
        """Zero-length cache tensors, shaped [batch, kv heads, 0, head dim] from the graph's inputs."""
        past = []
        for name in self.past_names:
            _, heads, _, head_dim = self.backend.input_shapes[name]
            past.append(np.zeros((batch, heads, 0, head_dim), dtype=np.float32))
        return past

    def feeds(self, inputs: dict[str, torch.Tensor], past: list[np.ndarray] | None = None) -> dict[str, np.ndarray]:
        ids = inputs["input_ids"]
        past = past if past is not None else self.empty_past(ids.shape[0])
        past_len = past[0].shape[2] if past else 0
        made = {
            "token_type_ids": lambda: np.zeros(tuple(ids.shape), dtype=np.int64),
            "attention_mask": lambda: np.ones((ids.shape[0], past_len + ids.shape[1]), dtype=np.int64),
            # as eager PyTorch without position_ids: positions continue after the cache
            "position_ids": lambda: np.broadcast_to(np.arange(past_len, past_len + ids.shape[1]),
                                                    tuple(ids.shape)).copy(),
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
        logits = torch.from_numpy(self.backend.run(self.feeds(inputs))[0])
        return logits[:, -keep_last:] if keep_last is not None and logits.dim() == 3 else logits

    # The decode loop (batch 1 or equal-length rows): state = the presents of the last call.
    def start(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, list[np.ndarray]]:
        return self.step(input_ids, None)  # a prefill is a step from the empty cache

    def step(self, token_ids: torch.Tensor, state: list[np.ndarray] | None) -> tuple[torch.Tensor, list[np.ndarray]]:
        outputs = self.backend.run(self.feeds({"input_ids": token_ids}, past=state))
        return torch.from_numpy(outputs[0][:, -1]), outputs[1:]


def load_graph_runner(artifact: Path, tokenizer, kind: ModelKind, device: str, runtime: dict[str, Any]) -> GraphRunner:
    name = runtime["runtime"]
    if name not in BACKENDS:
        raise ValueError(f"{Path(artifact) / RUNTIME_FILE}: unknown runtime {name!r}; known: {', '.join(BACKENDS)}")
    threads = torch.get_num_threads()  # pinned by the suite to --compresslab-threads, as for PyTorch
    # the precision an OpenVINO artifact ships with (its row's choice: f32, or bf16 where the CPU has it)
    options = {"precision": runtime["precision_hint"]} if name == "openvino" and "precision_hint" in runtime else {}
    backend = BACKENDS[name](Path(artifact) / runtime["model"], device, threads, **options)
    return GraphRunner(backend, tokenizer, device, kind)
