"""The two graph runtimes behind one small interface: input names, ``run(feeds)``, settings.

Threads are pinned to PyTorch's count (the suite pins every runtime to ``--compresslab-threads``
for a fair comparison). ONNX Runtime's intra-op spinning is off: a spinning ORT pool next to
PyTorch's on 2 cores slows both by orders of magnitude. OpenVINO's CPU plugin computes in bf16
by default on CPUs that have it, so its precision hint is set explicitly (f32) and recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compresslab.errors import MethodUnsupported
from compresslab.models.ov_stateful import PAST_PREFIX, make_stateful

OV_PRECISION = "f32"  # true fp32 arithmetic: rows compare compression, not the CPU plugin's bf16 default
# Runtimes whose timed workload (a fixed shape) runs on a second, static-shape compile, because
# that measured faster than the dynamic graph (see README, "How each runtime is measured")
STATIC_SHAPE_RUNTIMES = ("openvino",)
OV_PRECISIONS = ("f32", "bf16")  # bf16: a row of its own (ov-bf16), where the CPU computes in it


def ort_session_options(threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def ort_device_index(device: str) -> int:
    return int(device.split(":")[1]) if ":" in device else 0


def ort_providers(device: str) -> list:
    if device.startswith("cuda"):
        return [("CUDAExecutionProvider", {"device_id": ort_device_index(device)}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def has_kv_cache(input_names) -> bool:
    return any(name.startswith(PAST_PREFIX) for name in input_names)


@dataclass
class StaticShapes:
    """A compile of the graph for one set of input shapes (the timed workload's), beside the dynamic one."""

    shapes: dict[str, tuple[int, ...]]
    compiled: Any

    def fits(self, feeds: dict[str, np.ndarray]) -> bool:
        """Whether the feeds are exactly these inputs with exactly these shapes. Checked on every
        inference, the timed ones included: no dict is built, and the first mismatch ends it."""
        return len(feeds) == len(self.shapes) and all(
            self.shapes.get(name) == tuple(value.shape) for name, value in feeds.items())

    def recorded(self) -> dict[str, list[int]]:
        return {name: list(shape) for name, shape in self.shapes.items()}


def shapes_of(feeds: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(value.shape) for name, value in feeds.items()}


def symbolic_dims(graph_inputs, feeds: dict[str, np.ndarray]) -> dict[str, int]:
    """{dim name: size} of the graph's named dynamic dims, read off the feeds; a dim that two
    feeds give different sizes cannot be fixed (an error, not a silently wrong session)."""
    sizes: dict[str, int] = {}
    for graph_input in graph_inputs:
        for dim, size in zip(graph_input.shape, feeds[graph_input.name].shape):
            if isinstance(dim, str):
                if sizes.setdefault(dim, size) != size:
                    raise ValueError(f"graph dim {dim!r} is {sizes[dim]} in one feed and {size} in another")
    return sizes


class OrtBackend:
    def __init__(self, model_file: Path, device: str, threads: int):
        import onnxruntime as ort

        providers = ort_providers(device)
        if device.startswith("cuda") and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise MethodUnsupported("ONNX Runtime here has no CUDA execution provider (pip install compresslab[gpu] "
                                    "for onnxruntime-gpu)")
        self.model_file, self.threads, self.providers = model_file, threads, providers
        self.session = ort.InferenceSession(str(model_file), sess_options=ort_session_options(threads),
                                            providers=providers)
        self.static: StaticShapes | None = None
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.input_shapes = {i.name: list(i.shape) for i in self.session.get_inputs()}
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        # where IO binding leaves outputs: the device the session computes on
        self.output_device = ("cuda", ort_device_index(device)) if device.startswith("cuda") else ("cpu", 0)
        self.settings = {"runtime": "onnxruntime", "providers": self.session.get_providers(),
                         "intra_op_threads": threads, "inter_op_threads": 1, "spinning": False,
                         "graph_optimization": "ORT_ENABLE_ALL"}
        self.io_binding = device.startswith("cuda")
        if has_kv_cache(self.input_names):
            self.settings["kv_cache"] = "io-binding" if self.io_binding else "numpy"

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        session = self.static.compiled if self.static is not None and self.static.fits(feeds) else self.session
        return session.run(None, feeds)

    def specialize(self, feeds: dict[str, np.ndarray]) -> None:
        """A second session with the graph's symbolic dims fixed to these feeds' sizes (ORT's free
        dimension overrides): calls of exactly these shapes run on it, all others on the dynamic one."""
        import onnxruntime as ort

        options = ort_session_options(self.threads)
        for name, dims in symbolic_dims(self.session.get_inputs(), feeds).items():
            options.add_free_dimension_override_by_name(name, dims)
        session = ort.InferenceSession(str(self.model_file), sess_options=options, providers=self.providers)
        self.static = StaticShapes(shapes_of(feeds), session)
        self.settings["static_shapes"] = self.static.recorded()

    def run_cached(self, feeds: dict[str, Any], new_sequence: bool) -> tuple[np.ndarray, list]:
        """A decode step. On CUDA through IO binding: the presents stay ORT values on the GPU, bound
        as the next step's past, so the cache never crosses to the host. On the CPU a plain run:
        numpy arrays there are the ORT buffers themselves, and IO binding measured 5% slower
        (SmolLM2 fp32, 2 threads: 20.5 against 21.9 tokens/s)."""
        if not self.io_binding:
            outputs = self.session.run(None, feeds)
            return outputs[0], outputs[1:]
        binding = self.session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, value)
            else:
                binding.bind_ortvalue_input(name, value)
        for name in self.output_names:
            binding.bind_output(name, *self.output_device)
        self.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        return outputs[0].numpy(), list(outputs[1:])


def ov_device(device: str) -> str:
    """OpenVINO has no CUDA plugin: on a CUDA device its rows skip (MethodUnsupported) rather than time the
    CPU plugin under a CUDA label."""
    if device.startswith("cuda"):
        raise MethodUnsupported("OpenVINO runs on CPU (or an Intel GPU), not on CUDA devices")
    return "CPU"


def ov_config(threads: int, precision: str = OV_PRECISION) -> dict[str, Any]:
    return {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": precision,
            "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}


def ov_has_bf16() -> bool:
    """Whether this CPU computes in bf16 (OpenVINO would otherwise run a bf16 hint in f32)."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVinoBackend:
    """A decoder is compiled in OpenVINO's stateful form (models/ov_stateful.py) unless
    ``stateful=False``: its KV cache stays inside the model between decode steps."""

    def __init__(self, model_file: Path, device: str, threads: int, precision: str = OV_PRECISION,
                 stateful: bool = True):
        import openvino as ov

        if precision not in OV_PRECISIONS:
            raise ValueError(f"OpenVINO precision hint {precision!r}; valid: {', '.join(OV_PRECISIONS)}")
        target = ov_device(device)
        core = ov.Core()
        model = core.read_model(str(model_file))
        explicit_cache = has_kv_cache(port.get_any_name() for port in model.inputs)
        self.stateful = stateful and make_stateful(model)
        self.core, self.model_file, self.target, self.config = core, model_file, target, ov_config(threads, precision)
        self.compiled = core.compile_model(model, target, self.config)
        self.static: StaticShapes | None = None
        self.request = self.compiled.create_infer_request()
        self.input_names = tuple(i.get_any_name() for i in self.compiled.inputs)
        self.input_shapes = {i.get_any_name(): [d.get_length() if d.is_static else None for d in i.get_partial_shape()]
                             for i in self.compiled.inputs}
        self.output_names = tuple(o.get_any_name() for o in self.compiled.outputs)
        self.settings = {"runtime": "openvino", "device": target,
                         "threads": int(self.compiled.get_property("INFERENCE_NUM_THREADS")),
                         "precision": self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
                         "performance_hint": "LATENCY", "streams": 1,
                         # the CPU plugin's own choices, as shipped: activations of int4/int8-weight
                         # MatMuls quantized on the fly in groups of this size (0: off)
                         "dynamic_quantization_group_size": int(
                             self.compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE"))}
        if explicit_cache:
            self.settings["kv_cache"] = "stateful" if self.stateful else "explicit"
            # the cache's storage type inside the plugin where it fuses attention with the state
            self.settings["kv_cache_precision"] = self.compiled.get_property("KV_CACHE_PRECISION").get_type_name()

    def infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        # inputs shared, not copied (the call is synchronous); outputs copied (share_outputs=False):
        # the request reuses its output buffers on the next call
        request = self.static.compiled if self.static is not None and self.static.fits(feeds) else self.request
        results = request.infer(feeds, share_inputs=True)
        return [results[index] for index in range(len(self.output_names))]  # ports differ between compiles

    def specialize(self, feeds: dict[str, np.ndarray]) -> None:
        """A second compile with every input reshaped to these feeds' shapes (the timed workload):
        calls of exactly these shapes run on it, all others on the dynamic model. Encoders only:
        a stateful decoder's cache grows every step, so no one shape serves its calls."""
        if self.stateful:
            raise ValueError("a stateful decoder cannot be compiled for one static shape")
        model = self.core.read_model(str(self.model_file))
        model.reshape({name: list(shape) for name, shape in shapes_of(feeds).items()})
        request = self.core.compile_model(model, self.target, self.config).create_infer_request()
        self.static = StaticShapes(shapes_of(feeds), request)
        self.settings["static_shapes"] = self.static.recorded()

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """One whole sequence: a stateful model starts from an empty cache."""
        if self.stateful:
            self.request.reset_state()
        return self.infer(feeds)

    def run_cached(self, feeds: dict[str, np.ndarray], new_sequence: bool) -> tuple[np.ndarray, list]:
        """A decode step: stateful, the cache stays in the request (reset at a sequence's start);
        otherwise this step's presents come back to be fed as the next step's past."""
        if self.stateful:
            if new_sequence:
                self.request.reset_state()
            return self.infer(feeds)[0], []
        outputs = self.infer(feeds)
        return outputs[0], outputs[1:]


BACKENDS = {"onnxruntime": OrtBackend, "openvino": OpenVinoBackend}
