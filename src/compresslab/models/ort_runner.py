"""ONNX Runtime runner: the same ``logits(inputs)`` the tasks and the timer call on eager PyTorch.

Threads are pinned to PyTorch's count (the suite pins both to ``--compresslab-threads``) and
intra-op spinning is off: a spinning ORT pool next to PyTorch's on 2 cores slows both by orders
of magnitude. Inputs the graph needs but the task does not give (token_type_ids) are filled here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compresslab.models.spec import ModelKind

RUNTIME_FILE = "compresslab_runtime.json"  # which runtime and file an exported artifact ships


def runtime_of(artifact: Path) -> dict[str, Any] | None:
    marker = Path(artifact) / RUNTIME_FILE
    return json.loads(marker.read_text()) if marker.is_file() else None


def write_runtime(out: Path, runtime: str, model_file: str, **details: Any) -> None:
    (Path(out) / RUNTIME_FILE).write_text(json.dumps({"runtime": runtime, "model": model_file, **details}, indent=1))


def session_options(threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def providers_for(device: str) -> list:
    if device.startswith("cuda"):
        index = int(device.split(":")[1]) if ":" in device else 0
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


@dataclass
class OrtRunner:
    session: Any
    tokenizer: Any
    device: str
    kind: ModelKind
    threads: int
    model: None = None  # no torch module: module-level trackers (sparsity) do not apply
    input_names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.input_names = tuple(i.name for i in self.session.get_inputs())

    def feeds(self, inputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        ids = inputs["input_ids"]
        feeds = {}
        for name in self.input_names:
            if name in inputs:
                feeds[name] = inputs[name].cpu().numpy()
            elif name == "token_type_ids":
                feeds[name] = np.zeros(tuple(ids.shape), dtype=np.int64)
            elif name == "attention_mask":
                feeds[name] = np.ones(tuple(ids.shape), dtype=np.int64)
            else:
                raise ValueError(f"the exported graph needs input {name!r}, which the task does not provide; "
                                 f"graph inputs: {', '.join(self.input_names)}")
        return feeds

    def logits(self, inputs: dict[str, torch.Tensor], keep_last: int | None = None) -> torch.Tensor:
        logits = torch.from_numpy(self.session.run(["logits"], self.feeds(inputs))[0])
        return logits[:, -keep_last:] if keep_last is not None and logits.dim() == 3 else logits

    @property
    def is_causal_lm(self) -> bool:
        return self.kind == "causal-lm"


def load_ort_runner(artifact: Path, tokenizer, kind: ModelKind, device: str, runtime: dict[str, Any]) -> OrtRunner:
    import onnxruntime as ort

    threads = torch.get_num_threads()  # pinned by the suite to --compresslab-threads, as for PyTorch
    session = ort.InferenceSession(str(Path(artifact) / runtime["model"]), sess_options=session_options(threads),
                                   providers=providers_for(device))
    return OrtRunner(session, tokenizer, device, kind, threads)
