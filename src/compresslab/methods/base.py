"""The method protocol: a frozen config, declared capabilities, and one verb, ``apply``.

A method reads the previous stage's checkpoint directory and writes its own. It saves right
after compressing, before any forward pass: CPU kernels of several libraries repack weights
in place on first use, and a checkpoint saved afterwards reloads wrong or not at all.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from compresslab.assets import distribution_version
from compresslab.device import device_type
from compresslab.errors import MethodUnsupported  # also re-exported: methods and user code import it from here
from compresslab.models.spec import ModelKind

# import name -> distribution name, where they differ
DISTRIBUTIONS = {"onnxruntime": "onnxruntime", "openvino": "openvino", "gptqmodel": "gptqmodel",
                 "optimum.quanto": "optimum-quanto", "llama_cpp": "llama-cpp-python"}


@dataclass(frozen=True)
class StageContext:
    model_id: str
    kind: ModelKind
    device: str
    base_dir: Path  # the uncompressed baseline (its tokenizer/ dir)
    # n -> the first n calibration texts of the model's first task's training split (never its test data)
    calibration: Callable[[int], list[str]] | None = None
    # n -> the first n labelled examples of that training split (classifiers' recovery and distillation)
    training: Callable[[int], list] | None = None

    def calibration_texts(self, n: int) -> list[str]:
        if self.calibration is None:
            raise MethodUnsupported(f"{self.model_id}: its task provides no calibration data")
        return self.calibration(n)

    def training_examples(self, n: int) -> list:
        if self.training is None:
            raise MethodUnsupported(f"{self.model_id}: its task provides no labelled training data")
        return self.training(n)


def is_installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a dotted name whose parent package is missing
        return False


@dataclass(frozen=True)
class Method:
    family: ClassVar[str]
    uses_task_data: ClassVar[bool] = False
    requires_packages: ClassVar[tuple[str, ...]] = ()
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    kinds: ClassVar[tuple[ModelKind, ...]] = ("classifier", "causal-lm")
    identity: ClassVar[bool] = False  # True: the stage reuses its input checkpoint unchanged

    def fingerprint(self) -> dict[str, Any]:
        return {
            "class": type(self).__qualname__,
            "config": asdict(self),
            "packages": {name: distribution_version(DISTRIBUTIONS.get(name, name)) for name in self.requires_packages},
        }

    def describe(self) -> str:
        values = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self))
        return f"{type(self).__name__}({values})"

    def check_supported(self, kind: ModelKind, device: str) -> None:
        missing = [name for name in self.requires_packages if not is_installed(name)]
        if missing:
            raise MethodUnsupported(f"needs package(s) {', '.join(missing)} (pip install compresslab[gpu] or "
                                    "requirements/cpu.txt)")
        if device_type(device) not in self.devices:
            raise MethodUnsupported(f"runs on {', '.join(self.devices)}, not on {device}")
        if kind not in self.kinds:
            raise MethodUnsupported(f"applies to {', '.join(self.kinds)} models, not {kind}")

    def apply(self, src: Path, out: Path, ctx: StageContext) -> None:
        raise NotImplementedError
