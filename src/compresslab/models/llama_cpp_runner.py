"""Runner of a GGUF artifact on llama.cpp (through llama-cpp-python's binding of llama.h): the same
``logits(inputs)`` the tasks and the timer call on eager PyTorch, and the ``start``/``step`` decode loop.

Token ids go in, logits come out: llama.cpp's tokenizer is never used, so every task scores exactly
the ids the baseline scores. One sequence lives in the context's KV cache at a time: a batch is
evaluated row by row, each row's real tokens (attention mask 1) from position 0, which is what a
padded row with the mask and mask-derived position ids means to eager PyTorch.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import re
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compresslab.models.spec import ModelKind

RUNTIME = "llama.cpp"
MAX_CONTEXT = 2048  # the longest sequence a task or the timer feeds (perplexity windows: 512)
BATCH_TOKENS = 512  # tokens per llama_decode call (n_batch = n_ubatch): a perplexity window in one call
KV_TYPES = ("f16", "f32")  # the KV cache's element type: llama.cpp's default f16, or f32 beside an f32 file


# llama.cpp's CPU backend can keep quantized weights in "extra" buffer types whose layouts its SIMD kernels
# read faster. The loader's own choice (use_extra_bufts) picks AMX first on AMX CPUs, which crashes in
# ggml_backend_amx_mul_mat on this machine for every quantized file (llama.cpp issue #20824, open
# upstream); and CPU_REPACK dereferences a null layout (SIGSEGV) for a tensor it has no layout for. So the
# repacked layout is asked for by tensor name, for the types and shapes its AVX2 layouts take (the 8x8
# interleave: rows a multiple of 8), measured here: Q4_0 decode 84 -> 98 tokens/s on SmolLM2, 2 threads.
REPACK_BUFFER = "CPU_REPACK"
REPACKED_TYPES = ("Q4_0", "Q4_K")
REPACK_ROWS = 8
GGML_DEVICE_CPU = 0  # enum ggml_backend_dev_type

log = logging.getLogger(__name__)
GGML_LOG_ERROR = 4  # ggml.h of this llama.cpp: none 0, debug 1, info 2, warn 3, error 4, cont 5


@functools.cache
def quiet_llama_cpp():
    """llama.cpp prints every load, context and quantized tensor: route its errors to logging, drop
    the rest. The callback is cached so that ctypes keeps it alive while llama.cpp holds its pointer."""
    import llama_cpp

    @llama_cpp.llama_log_callback
    def forward(level, text, _user_data):
        if level == GGML_LOG_ERROR:
            log.error("llama.cpp: %s", text.decode("utf-8", errors="replace").rstrip())

    llama_cpp.llama_log_set(forward, ctypes.c_void_p(0))
    return forward


class BufferOverride(ctypes.Structure):
    """struct llama_model_tensor_buft_override: tensors whose name matches ``pattern`` go to ``buft``."""
    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


def repacked_tensor_names(model_file: Path) -> list[str]:
    """The block matrices of the file that CPU_REPACK has a layout for."""
    import gguf

    return [t.name for t in gguf.GGUFReader(model_file).tensors
            if t.name.startswith("blk.") and t.tensor_type.name in REPACKED_TYPES
            and len(t.shape) == 2 and int(t.shape[1]) % REPACK_ROWS == 0]


GGML_LIBRARIES = ("libggml.so", "libggml-base.so", "libggml-cpu.so")  # searched in this order


@functools.cache
def _ggml_libraries(lib_dir: Path) -> tuple[ctypes.CDLL, ...]:
    """Handles on the ggml libraries llama-cpp-python ships in ``lib_dir`` (already loaded by
    llama_cpp), opened once per process rather than on every function lookup."""
    return tuple(ctypes.CDLL(str(lib_dir / lib_name)) for lib_name in GGML_LIBRARIES if (lib_dir / lib_name).exists())


def _ggml_function(llama_cpp, name: str, restype, argtypes):
    """A function of the ggml libraries llama-cpp-python ships, or None when none of them has it."""
    for lib in _ggml_libraries(Path(llama_cpp.__file__).parent / "lib"):
        try:
            function = lib[name]  # a function object of its own (not the handle's shared attribute): its types are ours
        except AttributeError:
            continue
        function.restype, function.argtypes = restype, argtypes
        return function
    return None


def cpu_buffer_type(llama_cpp, wanted: str) -> int | None:
    """The CPU device's extra buffer type called ``wanted``, or None when this build has none of that
    name (another platform, an older llama.cpp, CPUs without AVX2)."""
    void_p = ctypes.c_void_p
    dev_by_type = _ggml_function(llama_cpp, "ggml_backend_dev_by_type", void_p, [ctypes.c_int])
    dev_reg = _ggml_function(llama_cpp, "ggml_backend_dev_backend_reg", void_p, [void_p])
    proc = _ggml_function(llama_cpp, "ggml_backend_reg_get_proc_address", void_p, [void_p, ctypes.c_char_p])
    buft_name = _ggml_function(llama_cpp, "ggml_backend_buft_name", ctypes.c_char_p, [void_p])
    has_avx2 = _ggml_function(llama_cpp, "ggml_cpu_has_avx2", ctypes.c_int, [])
    if None in (dev_by_type, dev_reg, proc, buft_name, has_avx2) or not has_avx2():
        return None
    device = dev_by_type(GGML_DEVICE_CPU)
    address = proc(dev_reg(device), b"ggml_backend_dev_get_extra_bufts") if device else None
    if not address:
        return None
    extra = ctypes.CFUNCTYPE(ctypes.POINTER(void_p), void_p)(address)(device)
    index = 0
    while extra[index]:
        if buft_name(extra[index]).decode() == wanted:
            return extra[index]
        index += 1
    return None


def repack_overrides(llama_cpp, model_file: Path):
    """The override list (NULL-terminated) that puts the repackable matrices in CPU_REPACK, and their
    number; (None, 0) when the build or the file offers nothing to repack."""
    names = repacked_tensor_names(model_file)
    buft = cpu_buffer_type(llama_cpp, REPACK_BUFFER) if names else None
    if buft is None:
        return None, 0
    pattern = ("^(" + "|".join(re.escape(name) for name in names) + ")$").encode()
    return (BufferOverride * 2)(BufferOverride(pattern, buft), BufferOverride(None, None)), len(names)


class LlamaCppContext:
    """A loaded GGUF model, one context (KV cache) and one token batch, freed with this object."""

    def __init__(self, model_file: Path, threads: int, kv_type: str = "f16", n_ctx: int = MAX_CONTEXT,
                 n_batch: int = BATCH_TOKENS):
        import llama_cpp

        if kv_type not in KV_TYPES:
            raise ValueError(f"KV cache type {kv_type!r}; valid: {', '.join(KV_TYPES)}")

        quiet_llama_cpp()
        self.lib = llama_cpp
        llama_cpp.llama_backend_init()
        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = 0
        model_params.use_extra_bufts = False  # not the loader's choice (AMX): REPACK_BUFFER's comment
        # kept on self: llama.cpp reads the list while it loads
        self._overrides, self.repacked_tensors = repack_overrides(llama_cpp, Path(model_file))
        if self._overrides is not None:
            model_params.tensor_buft_overrides = ctypes.cast(self._overrides, ctypes.c_void_p)
        self.model = llama_cpp.llama_model_load_from_file(str(model_file).encode(), model_params)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {model_file}")
        self.n_ctx = min(n_ctx, llama_cpp.llama_model_n_ctx_train(self.model))
        self.n_batch = min(n_batch, self.n_ctx)
        self.threads, self.kv_type = threads, kv_type
        params = llama_cpp.llama_context_default_params()
        params.type_k = params.type_v = llama_cpp.GGML_TYPE_F32 if kv_type == "f32" else llama_cpp.GGML_TYPE_F16
        params.n_ctx, params.n_batch, params.n_ubatch = self.n_ctx, self.n_batch, self.n_batch
        params.n_threads = params.n_threads_batch = threads
        params.no_perf = True
        self.ctx = llama_cpp.llama_init_from_model(self.model, params)
        if not self.ctx:
            llama_cpp.llama_model_free(self.model)
            raise RuntimeError(f"llama.cpp could not create a context of {self.n_ctx} tokens for {model_file}")
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self.model))
        self._free = weakref.finalize(self, _free, llama_cpp, self.model, self.ctx, self.batch)

    def clear(self) -> None:
        """Forget the cached sequence: the next decode starts a new one."""
        self.lib.llama_memory_clear(self.lib.llama_get_memory(self.ctx), True)

    def decode(self, tokens: list[int], first_pos: int, wanted: list[bool]) -> np.ndarray:
        """Evaluate ``tokens`` at positions ``first_pos...`` of the cached sequence; the logits of
        the positions flagged in ``wanted``, in order, as [n wanted, vocab]."""
        if first_pos + len(tokens) > self.n_ctx:
            raise ValueError(f"{first_pos + len(tokens)} tokens exceed the llama.cpp context of {self.n_ctx}")
        rows = []
        for start in range(0, len(tokens), self.n_batch):
            chunk, flags = tokens[start : start + self.n_batch], wanted[start : start + self.n_batch]
            self._fill(chunk, first_pos + start, flags)
            status = self.lib.llama_decode(self.ctx, self.batch)
            if status != 0:
                raise RuntimeError(f"llama_decode failed (status {status}) on {len(chunk)} tokens")
            n_out = sum(flags)
            if n_out:
                logits = self.lib.llama_get_logits(self.ctx)
                rows.append(np.ctypeslib.as_array(logits, shape=(n_out * self.n_vocab,)).reshape(n_out, -1).copy())
        return np.concatenate(rows) if rows else np.zeros((0, self.n_vocab), dtype=np.float32)

    def _fill(self, tokens: list[int], first_pos: int, flags: list[bool]) -> None:
        batch = self.batch
        batch.n_tokens = len(tokens)
        for i, (token, flag) in enumerate(zip(tokens, flags)):
            batch.token[i] = token
            batch.pos[i] = first_pos + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = flag


def _free(lib, model, ctx, batch) -> None:
    lib.llama_batch_free(batch)
    lib.llama_free(ctx)
    lib.llama_model_free(model)


def real_span(mask: torch.Tensor) -> tuple[int, int]:
    """[start, end) of a row's real tokens; padding may sit on either side, never inside."""
    real = mask.nonzero().flatten()
    if len(real) == 0:
        raise ValueError("a row of the batch has no token with attention mask 1")
    start, end = int(real[0]), int(real[-1]) + 1
    if end - start != len(real):
        raise ValueError("llama.cpp rows take padding on the left or right only, not inside a row")
    return start, end


@dataclass
class LlamaCppRunner:
    context: LlamaCppContext
    tokenizer: Any
    device: str
    kind: ModelKind
    gguf_type: str
    tensor_types: dict[str, int] = field(default_factory=dict)  # per GGUF type, from the export
    model: None = None  # no torch module: module-level trackers (sparsity) do not apply
    n_past: int = field(default=0, init=False)  # tokens of the sequence now in the KV cache

    @property
    def is_causal_lm(self) -> bool:
        return self.kind == "causal-lm"

    @property
    def settings(self) -> dict[str, Any]:
        return {"runtime": RUNTIME, "threads": self.context.threads, "threads_batch": self.context.threads,
                "gguf_type": self.gguf_type, "tensor_types": self.tensor_types, "kv_cache": self.context.kv_type,
                "n_ctx": self.context.n_ctx, "n_batch": self.context.n_batch,
                "weight_layout": REPACK_BUFFER if self.context.repacked_tensors else "plain",
                "repacked_tensors": self.context.repacked_tensors}

    def logits(self, inputs: dict[str, torch.Tensor], keep_last: int | None = None) -> torch.Tensor:
        ids = inputs["input_ids"]
        mask = inputs.get("attention_mask", torch.ones_like(ids))
        width = ids.shape[1] if keep_last is None else min(keep_last, ids.shape[1])
        out = torch.zeros(ids.shape[0], width, self.context.n_vocab)
        for row in range(ids.shape[0]):
            start, end = real_span(mask[row])
            self._check_positions(inputs.get("position_ids"), row, start, end)
            first_kept = ids.shape[1] - width  # padded coordinates of the first returned position
            wanted = [pos >= first_kept for pos in range(start, end)]
            self.context.clear()
            logits = self.context.decode(ids[row, start:end].tolist(), 0, wanted)
            if len(logits):
                out[row, end - first_kept - len(logits) : end - first_kept] = torch.from_numpy(logits)
        self.n_past = 0  # the cache holds a scoring row, not a decode sequence
        return out

    @staticmethod
    def _check_positions(position_ids: torch.Tensor | None, row: int, start: int, end: int) -> None:
        """Each row runs from position 0: given position ids must say the same for its real tokens."""
        if position_ids is None:
            return
        given = position_ids[row, start:end]
        if not torch.equal(given, torch.arange(end - start, dtype=given.dtype)):
            raise ValueError(f"llama.cpp rows start at position 0; row {row} has position ids "
                             f"{given[:4].tolist()}... for its first real tokens")

    # The decode loop (batch 1): state = the number of tokens in the KV cache after the call.
    def start(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
        if input_ids.shape[0] != 1:
            raise ValueError(f"the llama.cpp decode loop takes one sequence, got a batch of {input_ids.shape[0]}")
        self.context.clear()
        self.n_past = 0
        return self.step(input_ids, 0)

    def step(self, token_ids: torch.Tensor, state: int) -> tuple[torch.Tensor, int]:
        if state != self.n_past:
            raise ValueError(f"decode state {state} is not the sequence in llama.cpp's cache ({self.n_past} tokens)")
        tokens = token_ids[0].tolist()
        logits = self.context.decode(tokens, state, [False] * (len(tokens) - 1) + [True])
        self.n_past = state + len(tokens)
        return torch.from_numpy(logits), self.n_past


def load_llama_cpp_runner(artifact: Path, tokenizer, kind: ModelKind, device: str,
                          runtime: dict[str, Any]) -> LlamaCppRunner:
    from compresslab.errors import MethodUnsupported

    if device != "cpu":
        raise MethodUnsupported(f"the llama.cpp rows run on the CPU, not on {device}")
    threads = torch.get_num_threads()  # pinned by the suite to --compresslab-threads, as for PyTorch
    # an f32 file keeps an f32 cache: the row is the checkpoint itself on llama.cpp; the others keep
    # llama.cpp's default f16 cache, as they would ship
    kv_type = "f32" if runtime["gguf_type"] == "f32" else "f16"
    context = LlamaCppContext(Path(artifact) / runtime["model"], threads, kv_type)
    return LlamaCppRunner(context, tokenizer, device, kind, runtime["gguf_type"], runtime.get("tensor_types", {}))
