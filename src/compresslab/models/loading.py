"""Loading a saved PyTorch checkpoint directory for inference, quietly and on a chosen device."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from transformers import AutoTokenizer

from compresslab.models.formats import saved_format
from compresslab.models.spec import TOKENIZER_DIR, ModelKind

# Weight-loading bars from transformers would bury pytest's output; compresslab shows its own.
transformers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()


def load_pretrained(path: Path, kind: ModelKind, device: str = "cpu", **kwargs) -> torch.nn.Module:
    """A checkpoint directory as a model in eval mode, whichever format a method saved it in
    (models/formats.py knows the formats; nothing here does)."""
    path = Path(path)
    model = saved_format(path).load(path, kind, device, kwargs)
    if device != "cpu" and not kwargs.get("device_map"):
        model = model.to(device)
    return model.eval()


def save_tokenizer(tokenizer, artifact: Path) -> None:
    tokenizer.save_pretrained(Path(artifact) / TOKENIZER_DIR)


def load_tokenizer(path: Path):
    """The tokenizer of a baseline artifact (its tokenizer/ dir) or of any checkpoint directory."""
    path = Path(path)
    if (path / TOKENIZER_DIR).is_dir():
        path = path / TOKENIZER_DIR
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def ships_tokenizer(checkpoint: Path) -> bool:
    """True when ``checkpoint`` carries a tokenizer/ dir of its own (a baseline, or a stage that
    changed the vocabulary: methods/vocab_trim.py)."""
    return (Path(checkpoint) / TOKENIZER_DIR).is_dir()


def checkpoint_tokenizer(checkpoint: Path, base: Path):
    """The tokenizer that matches ``checkpoint``'s token ids: its own when it ships one (a trimmed
    vocabulary renumbers the ids), else the baseline's (no other compression changes the tokenizer)."""
    return load_tokenizer(checkpoint if ships_tokenizer(checkpoint) else base)


def carry_tokenizer(source: Path, out: Path) -> None:
    """Copy ``source``'s own tokenizer into a stage's ``out`` that wrote none, so a vocabulary
    change travels down a chain (``vocab-trim+int8-dynamic``) whichever method comes next."""
    import shutil

    if ships_tokenizer(source) and not ships_tokenizer(out):
        shutil.copytree(Path(source) / TOKENIZER_DIR, Path(out) / TOKENIZER_DIR)
