"""GGUF export for llama.cpp: a Llama-architecture checkpoint as one .gguf file in f32, f16, q8_0,
q4_0, q4_1 or q4_k_m, run by models/llama_cpp_runner.py.

llama.cpp's own converter (convert_hf_to_gguf.py) does not ship in any installable package, so the
float file is written here with the ``gguf`` package's writer and name map, following what that
converter does for HF Llama checkpoints: q_proj/k_proj rows permuted from HF's rotate-half RoPE
layout to llama.cpp's interleaved one, 1-D tensors (norms) kept in f32, a tied head stored once (as
the token embedding), the tokenizer's vocabulary in the file. The quantized types are made from the
f32 file by llama.cpp itself (``llama_model_quantize``, the library behind ``llama-quantize``, with
its default recipe: a k-quant or 4-bit file keeps the output/tied embedding in a higher type).

The suite feeds token ids, never text, to llama.cpp: the vocabulary makes the file load and
detokenize like the original, its tokenizer is not what the measurements use.
"""

from __future__ import annotations

import ctypes
import json
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from compresslab.methods.base import Method, MethodUnsupported, StageContext, is_installed
from compresslab.models.graph_runner import write_runtime
from compresslab.models.llama_cpp_runner import quiet_llama_cpp
from compresslab.models.loading import checkpoint_tokenizer

MODEL_FILE = "model.gguf"
RUNTIME = "llama.cpp"
FLOAT_TYPES = ("f32", "f16")  # written here
QUANTIZED_TYPES = ("q8_0", "q4_0", "q4_1", "q4_k_m")  # made by llama.cpp from the f32 file
GGUF_TYPES = FLOAT_TYPES + QUANTIZED_TYPES
ARCHITECTURES = ("LlamaForCausalLM",)
PADDING_TOKEN = "[PAD{}]"  # vocabulary rows beyond the tokenizer's, as llama.cpp's converter names them


def llama_ftype(gguf_type: str) -> int:
    """llama.cpp's file-type enum value of a GGUF type (the ``ftype`` of its quantize parameters)."""
    import gguf

    return int(getattr(gguf.LlamaFileType, "ALL_F32" if gguf_type == "f32" else f"MOSTLY_{gguf_type.upper()}"))


# --- the model's hyperparameters -------------------------------------------------------------------

def read_config(src: Path) -> dict[str, Any]:
    """config.json of a plain float Llama checkpoint; anything else is unsupported, with the reason."""
    config = json.loads((Path(src) / "config.json").read_text())
    architectures = config.get("architectures") or []
    if not set(architectures) & set(ARCHITECTURES):
        raise MethodUnsupported(f"GGUF export writes {', '.join(ARCHITECTURES)} checkpoints, not "
                                f"{', '.join(architectures) or config.get('model_type', 'this model')}")
    if config.get("quantization_config"):
        raise MethodUnsupported("GGUF export reads float checkpoints, not quantized ones "
                                f"({config['quantization_config'].get('quant_method', 'quantization_config')})")
    if config.get("hidden_act", "silu") != "silu":
        raise MethodUnsupported(f"llama.cpp's Llama graph uses SiLU, not {config['hidden_act']}")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise MethodUnsupported(f"GGUF export writes plain RoPE, not rope type {rope_type}")
    return config


def head_dim(config: dict[str, Any]) -> int:
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def rope_theta(config: dict[str, Any]) -> float:
    return float((config.get("rope_parameters") or {}).get("rope_theta", config.get("rope_theta", 10000.0)))


def add_hyperparameters(writer, config: dict[str, Any], name: str, gguf_type: str) -> None:
    writer.add_name(name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config.get("num_key_value_heads") or config["num_attention_heads"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(rope_theta(config))
    writer.add_rope_dimension_count(head_dim(config))
    writer.add_key_length(head_dim(config))
    writer.add_value_length(head_dim(config))
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(llama_ftype(gguf_type))


# --- the vocabulary --------------------------------------------------------------------------------

def tokenizer_model(tokenizer_json: dict[str, Any]) -> str:
    """llama.cpp's tokenizer family: byte-level BPE is "gpt2", SentencePiece-style BPE or unigram
    "llama", WordPiece "bert"."""
    model = tokenizer_json["model"]["type"]
    if model == "WordPiece":
        return "bert"
    if model == "BPE":
        return "gpt2" if "ByteLevel" in json.dumps(tokenizer_json.get("pre_tokenizer")) else "llama"
    if model == "Unigram":
        return "llama"
    raise MethodUnsupported(f"GGUF export: no llama.cpp tokenizer for a {model} tokenizer.json")


def token_texts(tokenizer, family: str, n_vocab: int) -> list[str]:
    """Token strings by id, padded to the model's vocabulary rows. WordPiece pieces get llama.cpp's
    "phantom space" form: word starts prefixed with U+2581, continuations without their ##."""
    texts = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    if family == "bert":
        texts = [t if t.startswith("[") and t.endswith("]") else t[2:] if t.startswith("##") else "\u2581" + t
                 for t in texts]
    return texts + [PADDING_TOKEN.format(i) for i in range(len(texts), n_vocab)]


def token_types(tokenizer, texts: list[str], family: str) -> list[int]:
    import gguf

    special = set(tokenizer.all_special_ids)
    added = {index: token.special for index, token in tokenizer.added_tokens_decoder.items()}
    types = []
    for index, text in enumerate(texts):
        if index >= len(tokenizer):
            types.append(gguf.TokenType.UNUSED)
        elif index in special or added.get(index):
            types.append(gguf.TokenType.CONTROL)
        elif index in added:
            types.append(gguf.TokenType.USER_DEFINED)
        elif family == "llama" and len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)
    return [int(t) for t in types]


def token_scores(tokenizer_json: dict[str, Any], n_vocab: int) -> list[float]:
    """Unigram pieces carry their log-probabilities; BPE pieces rank by id (earlier merges first)."""
    model = tokenizer_json["model"]
    if model["type"] == "Unigram":
        scores = [float(score) for _, score in model["vocab"]]
        return scores + [-1000.0] * (n_vocab - len(scores))
    return [-float(index) for index in range(n_vocab)]


def merges(tokenizer_json: dict[str, Any]) -> list[str]:
    return [m if isinstance(m, str) else " ".join(m) for m in tokenizer_json["model"].get("merges", [])]


def special_token_id(role: str, tokenizer, config: dict[str, Any]) -> int | None:
    """The model's own config first (a tokenizer rebuilt from a GGUF by transformers can name a
    different end-of-sequence token than the model generates), then the tokenizer's."""
    token_id = config.get(f"{role}_token_id")
    if isinstance(token_id, list):
        token_id = token_id[0] if token_id else None
    return token_id if token_id is not None else getattr(tokenizer, f"{role}_token_id", None)


def add_vocabulary(writer, tokenizer, config: dict[str, Any]) -> None:
    n_vocab = config["vocab_size"]
    tokenizer_json = json.loads(tokenizer.backend_tokenizer.to_str())
    family = tokenizer_model(tokenizer_json)
    if len(tokenizer) > n_vocab:
        raise MethodUnsupported(f"the tokenizer has {len(tokenizer)} tokens, the model {n_vocab} embedding rows")
    texts = token_texts(tokenizer, family, n_vocab)
    writer.add_tokenizer_model(family)
    writer.add_token_list(texts)
    writer.add_token_types(token_types(tokenizer, texts, family))
    if family == "llama":  # SentencePiece-style tokenization ranks pieces by score
        writer.add_token_scores(token_scores(tokenizer_json, n_vocab))
    if family == "gpt2":
        writer.add_token_merges(merges(tokenizer_json))
    for role in ("bos", "eos", "unk", "sep", "pad", "mask"):  # the ids a GGUF file names
        token_id = special_token_id(role, tokenizer, config)
        if token_id is not None:
            getattr(writer, f"add_{role}_token_id")(token_id)


# --- the tensors -----------------------------------------------------------------------------------

def rope_permute(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """HF Llama's q/k projection rows, per head [first halves | second halves] (rotate_half), into
    llama.cpp's interleaved pairs: the permutation llama.cpp's converter applies."""
    return (weight.reshape(n_heads, 2, weight.shape[0] // n_heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def gguf_tensors(src: Path, config: dict[str, Any]):
    """(GGUF name, float32 array) of every tensor of the checkpoint, in llama.cpp's layout."""
    import gguf
    from safetensors import safe_open

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config["num_hidden_layers"])
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    tied = config.get("tie_word_embeddings", False)
    output = f"{gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.OUTPUT]}.weight"  # the output projection, llama.cpp's name
    for file in sorted(Path(src).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for hf_name in handle.keys():
                name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
                if name is None:
                    raise MethodUnsupported(f"GGUF export: no llama.cpp tensor for {hf_name} in {file.name}")
                if tied and name == output:
                    continue  # llama.cpp reads a missing output tensor as the tied token embedding
                data = handle.get_tensor(hf_name).to(torch.float32).numpy()
                if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
                    data = rope_permute(data, heads)
                elif hf_name.endswith(("k_proj.weight", "k_proj.bias")):
                    data = rope_permute(data, kv_heads)
                yield name, data


def stored(data: np.ndarray, gguf_type: str) -> np.ndarray:
    """f16 files store matrices in f16 and keep 1-D tensors (norms, biases) in f32, as llama.cpp does."""
    return data.astype(np.float16) if gguf_type == "f16" and data.ndim > 1 else data


def write_float_gguf(src: Path, tokenizer, path: Path, gguf_type: str, name: str) -> None:
    import gguf

    config = read_config(src)
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    add_hyperparameters(writer, config, name, gguf_type)
    add_vocabulary(writer, tokenizer, config)
    for tensor_name, data in gguf_tensors(src, config):
        writer.add_tensor(tensor_name, stored(data, gguf_type))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def quantize_gguf(source: Path, target: Path, gguf_type: str, threads: int) -> None:
    """llama.cpp's quantizer, with its default recipe for the type."""
    import llama_cpp

    quiet_llama_cpp()  # a line per tensor otherwise; a failure still reaches logging
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_ftype(gguf_type)
    params.nthread = threads
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if status != 0:
        raise RuntimeError(f"llama_model_quantize to {gguf_type} failed (status {status})")


def tensor_types(path: Path) -> dict[str, int]:
    """How many tensors of the file each GGUF type holds: llama.cpp's recipe chooses per tensor (a
    k-quant falls back to another type for rows not a multiple of its 256-wide blocks)."""
    from gguf import GGUFReader

    return dict(sorted(Counter(t.tensor_type.name for t in GGUFReader(path).tensors).items()))


@dataclass(frozen=True)
class GgufExport(Method):
    gguf_type: str = "f32"
    family: ClassVar[str] = "gguf"
    requires_packages: ClassVar[tuple[str, ...]] = ("llama_cpp", "gguf")
    devices: ClassVar[tuple[str, ...]] = ("cpu",)  # llama-cpp-python built here for the CPU
    kinds: ClassVar[tuple[str, ...]] = ("causal-lm",)

    def __post_init__(self) -> None:
        if self.gguf_type not in GGUF_TYPES:
            raise ValueError(f"GgufExport.gguf_type must be one of {', '.join(GGUF_TYPES)}, got {self.gguf_type!r}")

    def check_supported(self, kind, device: str) -> None:
        if not is_installed("llama_cpp"):  # base's hint names the wrong extra for this package
            raise MethodUnsupported("needs llama-cpp-python (pip install compresslab[llama], or "
                                    "-r requirements/llama.txt: it compiles llama.cpp)")
        super().check_supported(kind, device)

    def apply(self, src: Path, out: Path, ctx: StageContext) -> None:
        read_config(src)  # unsupported checkpoints fail before any work
        tokenizer = checkpoint_tokenizer(src, ctx.base_dir)  # a trimmed vocabulary travels down a chain
        target = Path(out) / MODEL_FILE
        if self.gguf_type in FLOAT_TYPES:
            write_float_gguf(src, tokenizer, target, self.gguf_type, ctx.model_id)
        else:
            with tempfile.TemporaryDirectory(prefix="compresslab-gguf-") as tmp:
                f32 = Path(tmp) / MODEL_FILE
                write_float_gguf(src, tokenizer, f32, "f32", ctx.model_id)
                quantize_gguf(f32, target, self.gguf_type, torch.get_num_threads())
        write_runtime(out, RUNTIME, MODEL_FILE, gguf_type=self.gguf_type, tensor_types=tensor_types(target))
