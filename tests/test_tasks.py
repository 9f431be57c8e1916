import math

import pytest
import torch
import torch.nn.functional as F

from compresslab.models.runner import TorchRunner
from compresslab.tasks import tweets, wiki
from compresslab.tasks.lm import ZERO_SHOT_PROMPT, WikiPerplexity, ZeroShotSentiment
from compresslab.tasks.tweets import Example, stratified_split
from tiny import tiny_llama, tokenizer


@pytest.fixture(scope="module")
def lm_runner():
    return TorchRunner(tiny_llama(), tokenizer(), "cpu", "causal-lm")


def brute_force_scores(runner, task, labels):
    rows = []
    for example in tweets.load_splits().test[: task.n_examples]:
        prompt = runner.tokenizer(ZERO_SHOT_PROMPT.format(text=example.text), add_special_tokens=False)["input_ids"]
        row = []
        for name in labels:
            ids = runner.tokenizer(" " + name, add_special_tokens=False)["input_ids"]
            seq = torch.tensor([prompt + ids])
            logprobs = F.log_softmax(runner.logits({"input_ids": seq, "attention_mask": torch.ones_like(seq)})[0], -1)
            row.append(sum(logprobs[len(prompt) - 1 + i, t].item() for i, t in enumerate(ids)))
        rows.append(row)
    return torch.tensor(rows)


@pytest.mark.parametrize("labels", [tweets.LABELS, ("unhappily", "meh", "delightfully")])
def test_zero_shot_scores_match_brute_force(lm_runner, monkeypatch, labels):
    monkeypatch.setattr(tweets, "LABELS", labels)
    task = ZeroShotSentiment(n_examples=5, batch_size=3)  # batches of mixed lengths exercise left padding
    expected = brute_force_scores(lm_runner, task, labels)
    torch.testing.assert_close(task.label_scores(lm_runner), expected, atol=1e-4, rtol=1e-4)


def test_perplexity_matches_manual_nll(lm_runner):
    task = WikiPerplexity(window=64, n_windows=3, batch_size=2)
    result = task.evaluate(lm_runner)
    windows = task.windows(lm_runner.tokenizer)
    nll = 0.0
    for window in windows:
        logits = lm_runner.logits({"input_ids": window[None], "attention_mask": torch.ones(1, 64, dtype=torch.long)})
        nll += F.cross_entropy(logits[0, :-1], window[1:], reduction="sum").item()
    assert result.metrics["perplexity"] == pytest.approx(math.exp(nll / (3 * 63)), rel=1e-5)
    assert result.reference_logits.shape == (64, tokenizer().vocab_size)


def test_wiki_split_is_disjoint_and_clean():
    text = wiki.load_wiki()
    assert len(text.train) > 50 and len(text.held_out) > 10
    assert not set(text.train) & set(text.held_out)
    assert "{{" not in text.held_out[0] and "<ref" not in text.held_out[0]


def test_clean_wikitext():
    raw = "'''Anarchism''' is a {{nested {{template}} here}} [[political philosophy|philosophy]]<ref>x</ref>."
    assert wiki.clean_wikitext(raw) == "Anarchism is a  philosophy."


def test_tweet_splits_are_stratified_seeded_and_disjoint():
    splits = tweets.load_splits()
    assert (len(splits.validation), len(splits.test)) == (599, 1201)
    texts = [{e.text for e in part} for part in (splits.train, splits.validation, splits.test)]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    share = lambda part: torch.bincount(torch.tensor([e.label for e in part]), minlength=3).float() / len(part)
    torch.testing.assert_close(share(splits.test), share(splits.train), atol=0.01, rtol=0)
    examples = [Example(str(i), i % 3) for i in range(90)]
    assert stratified_split(examples, (9, 9), 1) == stratified_split(examples, (9, 9), 1)


def test_minilm_baseline_head_is_seeded():
    # the fine-tune starts from a new classification head: it must be the same every build
    from compresslab.models.embedded import MiniLMTweetClassifier

    source = MiniLMTweetClassifier()
    first, second = source.initial_model(), source.initial_model()
    assert torch.equal(first.classifier.weight, second.classifier.weight)
    assert first.classifier.weight.shape == (3, 384)
