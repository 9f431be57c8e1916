"""MODELS, TASKS and the matrix's ROWS (METHODS and the tiers derive from them): the only place names are bound.

A new method is one line in ROWS (plus its module, a floors default and its tests).
"""

from __future__ import annotations

from dataclasses import dataclass

from compresslab import catalog
from compresslab.methods.base import Method
from compresslab.methods.bnb import BitsAndBytesQuant
from compresslab.methods.block_distill import BlockDropDistill
from compresslab.methods.distill import LayerDropDistill
from compresslab.methods.dtype import Baseline, DtypeCast
from compresslab.methods.gguf_export import GgufExport
from compresslab.methods.gptq import AWQ, GPTQ
from compresslab.methods.hqq import HQQ
from compresslab.methods.int4_weight import Int4WeightOnly
from compresslab.methods.lowrank import LowRankSVD
from compresslab.methods.onnx_export import OrtExport
from compresslab.methods.ort_fused import OrtFused
from compresslab.methods.oneshot_sparsity import OneShotSparsity
from compresslab.methods.openvino import OpenVinoExport
from compresslab.methods.pruning import MagnitudePrune
from compresslab.methods.speculative import SpeculativeDecoding
from compresslab.methods.qat import QuantizationAwareTraining
from compresslab.methods.tp_prune import TorchPruningPrune
from compresslab.methods.torchao_quant import TorchaoQuant
from compresslab.methods.torchao_static import TorchaoStaticInt8
from compresslab.methods.vocab_trim import VocabTrim
from compresslab.models.embedded import MiniLMTweetClassifier, SmolLM2FromGGUF
from compresslab.models.finetune import FinetuneConfig, TrainBudget
from compresslab.models.hub import HubModel
from compresslab.models.spec import ModelSpec
from compresslab.tasks.base import Task
from compresslab.tasks.classification import EmotionClassification, TweetSentiment
from compresslab.tasks.lm import FewShotSentiment, WikiPerplexity

TASKS: dict[str, Task] = {
    "tweet-sentiment": TweetSentiment(),
    "emotion": EmotionClassification(),
    "wiki-perplexity": WikiPerplexity(),
    "tweet-sentiment-fewshot": FewShotSentiment(),
}

MODELS: dict[str, ModelSpec] = {
    "minilm-sentiment": ModelSpec(
        id="minilm-sentiment", kind="classifier", source=MiniLMTweetClassifier(),
        tasks=("tweet-sentiment",), latency_seq_len=64,
        description="all-MiniLM-L6-v2 fine-tuned in-project on high-confidence tweets (3-way sentiment)",
    ),
    "smollm2-135m": ModelSpec(
        id="smollm2-135m", kind="causal-lm", source=SmolLM2FromGGUF(),
        tasks=("wiki-perplexity", "tweet-sentiment-fewshot"), latency_seq_len=128,
        description="SmolLM2-135M-Instruct, dequantized from the shipped Q4_1 GGUF to fp32",
    ),
    "bert-base-emotion": ModelSpec(
        id="bert-base-emotion", kind="classifier",
        source=HubModel("bert-base-emotion", "bhadresh-savani/bert-base-uncased-emotion", "classifier"),
        tasks=("emotion",), latency_seq_len=64,
        description="bert-base-uncased fine-tuned on dair-ai/emotion (hub or local path)",
    ),
    "tinyllama-1.1b": ModelSpec(
        id="tinyllama-1.1b", kind="causal-lm",
        source=HubModel("tinyllama-1.1b", "TinyLlama/TinyLlama-1.1B-Chat-v1.0", "causal-lm"),
        tasks=("wiki-perplexity", "tweet-sentiment-fewshot"), latency_seq_len=128,
        description="TinyLlama-1.1B-Chat-v1.0 (hub or local path)",
    ),
}

CLF, LM = ("classifier",), ("causal-lm",)
BOTH = CLF + LM


@dataclass(frozen=True)
class Row:
    """One method, or a chain of registered ids, and where it runs: ``default`` holds the kinds of
    model whose default tier includes it (matrix.tier_of drops a row the floors mark as a known
    failure); ``matrix=False`` keeps a method runnable by id (COMPRESSLAB_MATRIX, chains) but out of
    every tier."""

    id: str
    method: Method | None = None  # None: a chain of the ids before it
    default: tuple[str, ...] = ()
    matrix: bool = True


# The matrix, one line per row, in the order a run takes them. Tier "default" (make bench) is, per
# kind of model, the Pareto front of the last full run and the best row of each family (dtype, eager
# int8, each graph runtime, 4-bit weights, distillation, the best chain); dominated rows (int8-weight,
# bnb, the fp32 graph exports, one-shot pruning) and training-heavy ones run in "full" only.
ROWS: tuple[Row, ...] = (
    Row("fp32", Baseline(), default=BOTH),
    # quantization
    Row("bf16", DtypeCast(dtype="bfloat16"), default=BOTH),
    Row("int8-dynamic", TorchaoQuant(scheme="int8-dynamic"), default=BOTH),
    Row("int8-weight", TorchaoQuant(scheme="int8-weight")),
    Row("int8-static", TorchaoStaticInt8()),
    Row("int4-weight", Int4WeightOnly(group_size=128), default=LM),
    Row("bnb-int8", BitsAndBytesQuant(bits=8)),
    Row("bnb-nf4", BitsAndBytesQuant(bits=4, quant_type="nf4"), default=LM),
    Row("bnb-nf4-dq", BitsAndBytesQuant(bits=4, quant_type="nf4", double_quant=True), matrix=False),
    Row("gptq-w4g128", GPTQ(bits=4, group_size=128), default=LM),
    Row("gptq-w8g128", GPTQ(bits=8, group_size=128), matrix=False),
    Row("awq-w4g128", AWQ(bits=4, group_size=128), default=LM),
    Row("awq-w4g64", AWQ(bits=4, group_size=64)),  # SmolLM2's 576-wide layers: gptqmodel AWQ needs 576 % group == 0
    Row("hqq-w4g64", HQQ(bits=4, group_size=64), default=BOTH),
    Row("hqq-w3g64", HQQ(bits=3, group_size=64), default=BOTH),
    # Oracle rows (README: "Which 4-bit rows are on the model's original grid"): SmolLM2's weights are
    # Q4_1 underneath (asymmetric, groups of 32 along the input dimension), so these must reproduce
    # its fp32 perplexity wherever the format can hold that grid; one that cannot is a known failure.
    Row("hqq-w4g32-asym", HQQ(bits=4, group_size=32, compute_dtype="float32", zero_point="min-max")),
    Row("gptq-w4g32-asym", GPTQ(bits=4, group_size=32, sym=False)),
    # quantization-aware training (methods/qat.py): a fine-tune on fake-quantized Linears, fixed in steps,
    # then its PTQ twin's conversion and artifact; floors: at least as good as the twin in the same run
    Row("qat-int8", QuantizationAwareTraining(target="int8-dynamic")),
    Row("qat-int4", QuantizationAwareTraining(target="int4-weight", group_size=128)),
    # sparsity and structure
    Row("prune-l1-50", MagnitudePrune(sparsity=0.5, scope="layer")),
    Row("prune-global-50", MagnitudePrune(sparsity=0.5, scope="global")),
    Row("prune-iter-50", MagnitudePrune(sparsity=0.5, scope="global", rounds=3, recovery=TrainBudget(
        classifier=FinetuneConfig(max_steps=80, learning_rate=5e-5),
        # about 8 s a step on 2 cores: 3 rounds x 30 steps make the stage about 12 minutes
        causal_lm=FinetuneConfig(max_steps=30, batch_size=4, max_length=256, learning_rate=5e-5)))),
    Row("sparse-2of4", MagnitudePrune(sparsity=0.5, pattern="2:4")),
    Row("sparsegpt-50", OneShotSparsity(algorithm="sparsegpt", sparsity=0.5)),
    Row("sparsegpt-2of4", OneShotSparsity(algorithm="sparsegpt", sparsity=0.5, mask_structure="2:4")),
    Row("wanda-50", OneShotSparsity(algorithm="wanda", sparsity=0.5)),
    # 30% of every block's heads and MLP channels, cut along Torch-Pruning's dependency graph, for encoders
    # and (grouped-query) decoders alike
    Row("tp-prune-30", TorchPruningPrune(fraction=0.3)),
    Row("distill-half", LayerDropDistill(keep_every=2), default=CLF),
    # decoders: the 8 consecutive blocks whose loss costs least, healed by distillation (about 15 minutes
    # of CPU training: full tier only)
    Row("distill-cut8", BlockDropDistill(n_drop=8)),
    # speculative decoding: the target unchanged, drafted by its distill-half student (decoders only)
    Row("spec-distill-half", SpeculativeDecoding(draft="distill-half", num_draft_tokens=4)),
    # the vocabulary the task's training split uses: tokenizer and word embedding shrink together
    Row("vocab-trim", VocabTrim()),
    Row("lowrank-svd", LowRankSVD(energy=0.6)),
    # runtimes. ort-int8-static (per-tensor QDQ from min-max calibration) fell below its floors on both
    # models (MiniLM 97.8% accuracy at 0.61x fp32 speed; SmolLM2 perplexity 140.6)
    Row("ort", OrtExport()),
    Row("ort-int8", OrtExport(quantization="dynamic-int8"), default=CLF),
    Row("ort-int8-static", OrtExport(quantization="static-int8")),
    Row("ort-fused", OrtFused()),  # the fp32 graph after ORT's transformer optimizer (norm and GELU fusions)
    Row("openvino", OpenVinoExport()),
    Row("ov-bf16", OpenVinoExport(precision="bf16")),  # the same fp32 IR, computed in bf16 (CPUs that have it)
    Row("ov-int8", OpenVinoExport(compression="int8"), default=CLF),
    # ov-int8 with SmoothQuant at the paper's balanced alpha 0.5 on every MatMul (ov-int8: NNCF's own 0.95)
    Row("ov-int8-sq", OpenVinoExport(compression="int8", smooth_quant_alpha=0.5)),
    Row("ov-int8-weights", OpenVinoExport(compression="int8-weights"), default=LM),
    Row("ov-int4-weights", OpenVinoExport(compression="int4-weights"), default=BOTH),
    # int8 graphs whose embedding tables are 4-bit (int8 PTQ and dynamic int8 already store them in 8 bits)
    Row("ov-int8-emb4", OpenVinoExport(compression="int8", embeddings="int4")),
    Row("ort-int8-emb4", OrtExport(quantization="dynamic-int8", embeddings="int4")),
    # llama.cpp on a GGUF file of the decoder (methods/gguf_export.py; the llama extra, else skipped).
    # gguf-q4_1 is an oracle row: llama.cpp's Q4_1 is SmolLM2's own grid, so it must reproduce fp32.
    Row("gguf-f32", GgufExport(gguf_type="f32")),
    Row("gguf-q8_0", GgufExport(gguf_type="q8_0")),
    Row("gguf-q4_1", GgufExport(gguf_type="q4_1")),
    Row("gguf-q4_0", GgufExport(gguf_type="q4_0")),
    Row("gguf-q4_k_m", GgufExport(gguf_type="q4_k_m"), default=LM),
    Row("ov-w4g32-asym", OpenVinoExport(compression="int4-weights", group_size=32, int4_ratio=1.0, awq=False)),
    # chains: the combinations of the study this project grew from (distillation + quantization was
    # its best). On SmolLM2-135M the distilled student pruned to 50% by magnitude measured perplexity
    # 103,300: worse than a uniform guess over its 49,152-token vocabulary.
    Row("distill-half+int8-dynamic"),
    Row("prune-global-50+int8-dynamic"),
    Row("distill-half+prune-global-50+int8-dynamic"),
    Row("prune-global-50+gptq-w4g128"),
    Row("distill-half+ort-int8"),
    Row("distill-half+ov-int8", default=CLF),
    # the trimmed vocabulary under the runtimes (the embedding is half of MiniLM)
    Row("vocab-trim+ort-int8"),
    Row("distill-half+vocab-trim+int8-dynamic"),
    Row("distill-half+vocab-trim+ov-int8"),
    Row("distill-half+vocab-trim+ov-int8-emb4", default=CLF),
)

METHODS: dict[str, Method] = {row.id: row.method for row in ROWS if row.method is not None}

BASELINE_METHOD = catalog.BASELINE_METHOD

# The full matrix (tier "full"): every model with every row; a method that does not apply to a model
# (GPTQ on an encoder, SparseGPT on a classifier) skips with its reason. It holds the slow rows (CPU
# training: iterative pruning, structured pruning, low-rank) and the known-bad ones.
FULL_MATRIX: dict[str, tuple[str, ...]] = {
    model_id: tuple(row.id for row in ROWS if row.matrix) for model_id in MODELS
}

# Tier "smoke": what CI runs on every pull request, a baseline and one quantization per embedded model
# (SmolLM2's int8-dynamic is a known failure: the smoke slice keeps an XFAIL path in every CI run).
SMOKE_MATRIX: dict[str, tuple[str, ...]] = {
    "minilm-sentiment": ("fp32", "int8-dynamic"),
    "smollm2-135m": ("fp32", "int8-dynamic"),
}

# Tier "default", per kind of model, from each row's ``default``.
DEFAULT_TIER: dict[str, tuple[str, ...]] = {
    kind: tuple(row.id for row in ROWS if kind in row.default) for kind in BOTH
}


def builtin_catalog() -> catalog.Catalog:
    """compresslab's own models, tasks and methods with the tiered matrix: what a repository without a
    project config benchmarks (read at call time: tests register tiny models in these dicts)."""
    return catalog.Catalog(MODELS, TASKS, METHODS, dict(FULL_MATRIX), tiered=True, source="compresslab's registry")


def get_model(model_id: str) -> ModelSpec:
    return builtin_catalog().get_model(model_id)


def get_method(method_id: str) -> Method:
    return builtin_catalog().get_method(method_id)
