"""GPTQ and AWQ weight-only quantization through gptqmodel (auto-gptq and autoawq are dead upstream).

The saved checkpoint is a real 4-bit (or 8-bit) GPTQ/AWQ checkpoint; transformers reloads it
through its gptqmodel integration, the path a user would take (models/formats.py pins the torch
kernels on CPU). On CPU, quantization runs in bfloat16 with the torch kernels (GPTQ_TORCH /
AWQ_TORCH); on CUDA gptqmodel picks its kernels.

Quantization runs in a child process (compresslab.child_process): on any error in a worker
thread gptqmodel prints the traceback and calls os._exit(1), which would end the whole pytest
session with no summary. In a child, the error becomes this stage's failure, with the child's
last lines in its message.

gptqmodel quantizes the decoder blocks, and the lm_head only when asked: the one full-precision
rule (models/precision.py) sets that flag.

Asymmetric GPTQ (``sym=False``) stores integer zero points (packed 4-bit qzeros), and gptqmodel widens
each group's range to include 0 before it fits them. A grid whose minimum is no whole number of steps
below 0 (llama.cpp's Q4_1, under SmolLM2's weights) cannot be held: on three of SmolLM2's block
weights the rounded zero point alone is 8 to 9% relative error at groups of 32 (a float zero point:
6e-8), so gptq-w4g32-asym is no oracle there. On a grid with integer zero points the whole path is exact
(tests/test_oracle_rows.py): packing, fp16 scales, and the act-group-aware reordering gptqmodel turns
on without desc_act (it permutes whole groups and columns within a group, so groups stay aligned);
desc_act=True would assign columns to groups in activation order, off the model's contiguous blocks.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from compresslab.child_process import run_module
from compresslab.methods.base import Method, MethodUnsupported, StageContext
from compresslab.models.loading import load_tokenizer
from compresslab.models.precision import stays_full_precision
from compresslab.models.spec import TOKENIZER_DIR

# Files gptqmodel writes beside the weights that belong to the tokenizer, not the model.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "vocab.json", "merges.txt", "vocab.txt")


def quantizes_lm_head() -> bool:
    """gptqmodel's ``lm_head`` flag, from the full-precision rule (which keeps the head)."""
    return not stays_full_precision("lm_head", "causal-lm")


def cpu_workers_default(threads: int) -> None:
    """gptqmodel sizes its CPU worker pool from GPTQMODEL_CPU_WORKERS; unset, it oversubscribes small machines."""
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(threads))


@dataclass(frozen=True)
class GPTQModelQuant(Method):
    bits: int = 4
    group_size: int = 128
    sym: bool = True
    calibration_samples: int = 64
    calibration_tokens: int = 512
    uses_task_data: ClassVar[bool] = True
    requires_packages: ClassVar[tuple[str, ...]] = ("gptqmodel",)
    kinds: ClassVar[tuple[str, ...]] = ("causal-lm",)  # gptqmodel quantizes decoder LMs only
    algorithm: ClassVar[str] = "gptq"

    def __post_init__(self) -> None:
        if self.bits not in (2, 3, 4, 8):
            raise ValueError(f"{type(self).__name__}.bits must be one of 2, 3, 4, 8, got {self.bits}")
        if self.group_size != -1 and self.group_size < 16:
            raise ValueError(f"{type(self).__name__}.group_size must be -1 or >= 16, got {self.group_size}")
        if self.calibration_samples < 1 or self.calibration_tokens < 16:
            raise ValueError(f"{type(self).__name__}: need >= 1 calibration sample of >= 16 tokens")

    def quantize_config(self):
        raise NotImplementedError

    def backend(self, device: str):
        from gptqmodel import BACKEND

        if device.startswith("cuda"):
            return BACKEND.AUTO
        return BACKEND.AWQ_TORCH if self.algorithm == "awq" else BACKEND.GPTQ_TORCH

    def calibration(self, ctx: StageContext) -> list[dict[str, list[int]]]:
        tokenizer = load_tokenizer(ctx.base_dir)
        rows = []
        for text in ctx.calibration_texts(self.calibration_samples):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"][: self.calibration_tokens]
            rows.append({"input_ids": ids, "attention_mask": [1] * len(ids)})
        return rows

    def check_shapes(self, src: Path) -> None:
        """Refuse, as a skip with the reason, what gptqmodel would reject mid-run (it has no clean error path)."""

    def apply(self, src: Path, out: Path, ctx: StageContext) -> None:
        import torch

        self.check_shapes(src)
        job = {"method": self, "src": str(src), "out": str(out), "tokenizer": str(ctx.base_dir),
               "device": ctx.device, "threads": torch.get_num_threads(), "calibration": self.calibration(ctx)}
        with tempfile.TemporaryDirectory(prefix=".gptq-job-", dir=out.parent) as tmp:
            job_file = Path(tmp) / "job.pkl"
            job_file.write_bytes(pickle.dumps(job))
            # No timeout: its length grows with the model and the machine; its progress shows as it comes.
            # cwd: gptqmodel writes a logs/ folder into the working directory, kept out of the user's tree.
            run_module("compresslab.methods.gptq", [str(job_file)], cwd=tmp, show_output=True,
                       what=f"{self.algorithm} quantization of {ctx.model_id}")

    def quantize_here(self, src: Path, out: Path, tokenizer_base: Path, device: str,
                      calibration: list[dict[str, list[int]]]) -> None:
        """The gptqmodel run itself (in the child process)."""
        import torch
        from gptqmodel import GPTQModel

        backend = self.backend(device)
        with _source_with_tokenizer(src, tokenizer_base / TOKENIZER_DIR, out.parent) as staged:
            model = GPTQModel.load(str(staged), self.quantize_config(), dtype=torch.bfloat16,
                                   device=device, backend=backend)
            model.quantize(calibration, batch_size=1, tokenizer=load_tokenizer(tokenizer_base), backend=backend)
            model.save(str(out))  # before any forward pass (see methods/base.py)
        _move_tokenizer_files(out)


def _child_main(job_file: str) -> None:
    import torch

    job = pickle.loads(Path(job_file).read_bytes())
    torch.set_num_threads(job["threads"])
    cpu_workers_default(job["threads"])
    job["method"].quantize_here(Path(job["src"]), Path(job["out"]), Path(job["tokenizer"]), job["device"],
                                job["calibration"])


@contextlib.contextmanager
def _source_with_tokenizer(src: Path, tokenizer_dir: Path, scratch: Path) -> Iterator[Path]:
    """A view of src with the tokenizer files beside the weights, where gptqmodel insists on loading them.

    Artifacts keep the tokenizer in tokenizer/ (so it is not counted as model bytes); gptqmodel
    reads it from the model directory and otherwise tries to convert a slow tokenizer and fails.
    Symlinks, so nothing is copied and the cached source stays untouched.
    """
    with tempfile.TemporaryDirectory(prefix=".gptq-src-", dir=scratch) as tmp:
        view = Path(tmp)
        for path in [*Path(src).iterdir(), *tokenizer_dir.iterdir()]:
            if path.is_file() and not (view / path.name).exists():
                (view / path.name).symlink_to(path.resolve())
        yield view


def _move_tokenizer_files(out: Path) -> None:
    """Keep the tokenizer out of the model's bytes, as in every other artifact (trackers/size.py)."""
    for name in TOKENIZER_FILES:
        if (out / name).exists():
            (out / TOKENIZER_DIR).mkdir(exist_ok=True)
            shutil.move(str(out / name), str(out / TOKENIZER_DIR / name))


@dataclass(frozen=True)
class GPTQ(GPTQModelQuant):
    desc_act: bool = False
    damp_percent: float = 0.05
    family: ClassVar[str] = "gptq"
    algorithm: ClassVar[str] = "gptq"

    def quantize_config(self):
        from gptqmodel import QuantizeConfig
        from gptqmodel.quantization import FORMAT, METHOD

        # gptqmodel 7 enables act_group_aware by default, which conflicts with desc_act=True.
        return QuantizeConfig(bits=self.bits, group_size=self.group_size, sym=self.sym, desc_act=self.desc_act,
                              act_group_aware=not self.desc_act, damp_percent=self.damp_percent,
                              method=METHOD.GPTQ, format=FORMAT.GPTQ, lm_head=quantizes_lm_head())


@dataclass(frozen=True)
class AWQ(GPTQModelQuant):
    family: ClassVar[str] = "awq"
    algorithm: ClassVar[str] = "awq"

    def check_shapes(self, src: Path) -> None:
        """gptqmodel's AWQ needs every layer width divisible by the group size (GPTQ takes partial groups)."""
        if self.group_size == -1:
            return
        config = json.loads((Path(src) / "config.json").read_text())
        dims = {name: config.get(name) for name in ("hidden_size", "intermediate_size")}
        bad = {name: dim for name, dim in dims.items() if isinstance(dim, int) and dim % self.group_size}
        if bad:
            shown = ", ".join(f"{name}={dim}" for name, dim in bad.items())
            raise MethodUnsupported(f"gptqmodel AWQ needs in_features divisible by group_size {self.group_size} "
                                    f"({shown}); use a group size that divides them")

    def quantize_config(self):
        from gptqmodel import QuantizeConfig
        from gptqmodel.quantization import FORMAT, METHOD

        return QuantizeConfig(bits=self.bits, group_size=self.group_size, sym=self.sym,
                              method=METHOD.AWQ, format=FORMAT.GEMM, lm_head=quantizes_lm_head())


if __name__ == "__main__":
    _child_main(sys.argv[1])
