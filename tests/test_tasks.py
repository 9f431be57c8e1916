import math

import pytest
import torch
import torch.nn.functional as F

from compresslab.models.runner import TorchRunner
from compresslab.tasks import metrics, tweets, wiki
from compresslab.tasks.classification import TweetSentiment
from compresslab import floors, registry
from compresslab.tasks.lm import FEW_SHOT_QUERY, FewShotSentiment, WikiPerplexity
from compresslab.tasks.tweets import Example, deduplicate, normalize, stratified_split
from tiny import tiny_bert_classifier, tiny_llama, tokenizer


@pytest.fixture(scope="module")
def lm_runner():
    return TorchRunner(tiny_llama(), tokenizer(), "cpu", "causal-lm")


def brute_force_scores(runner, task, texts, labels):
    rows = []
    for text in texts:
        prompt = runner.tokenizer(task.prefix() + FEW_SHOT_QUERY.format(text=text),
                                  add_special_tokens=False)["input_ids"]
        row = []
        for name in labels:
            ids = runner.tokenizer(" " + name, add_special_tokens=False)["input_ids"]
            seq = torch.tensor([prompt + ids])
            logprobs = F.log_softmax(runner.logits({"input_ids": seq, "attention_mask": torch.ones_like(seq)})[0], -1)
            row.append(sum(logprobs[len(prompt) - 1 + i, t].item() for i, t in enumerate(ids)))
        rows.append(row)
    return torch.tensor(rows)


@pytest.mark.parametrize("labels", [tweets.LABELS, ("unhappily", "meh", "delightfully")])
def test_few_shot_scores_match_brute_force(lm_runner, monkeypatch, labels):
    monkeypatch.setattr(tweets, "LABELS", labels)
    task = FewShotSentiment(per_label=2, shots_per_label=1, batch_size=4)  # mixed lengths: left padding
    texts = [e.text for e in task.examples()]
    expected = brute_force_scores(lm_runner, task, texts, labels)
    torch.testing.assert_close(task.label_scores(lm_runner, texts), expected, atol=1e-4, rtol=1e-4)


def test_few_shot_set_is_balanced_and_shots_come_from_training():
    task = FewShotSentiment()
    labels = [e.label for e in task.examples()]
    assert labels == [0] * 40 + [1] * 40 + [2] * 40  # a constant predictor scores exactly 1/3
    splits = tweets.load_splits()
    assert [e.label for e in task.shots()] == [0, 1, 2, 0, 1, 2]
    assert all(e in splits.train for e in task.shots())
    assert all(label in task.prefix() for label in tweets.LABELS)


class ConstantRunner:
    """A broken model: the same next-token distribution whatever the input."""

    device = "cpu"

    def __init__(self, tokenizer, favourite: str):
        self.tokenizer = tokenizer
        self.logit = torch.zeros(len(tokenizer))
        self.logit[tokenizer(" " + favourite, add_special_tokens=False)["input_ids"][0]] = 5.0

    def logits(self, inputs, keep_last=None):
        batch, width = inputs["input_ids"].shape
        return self.logit.expand(batch, keep_last or width, -1).clone()


@pytest.mark.parametrize("favourite", tweets.LABELS)
def test_a_constant_predictor_fails_the_repository_floor_of_every_lm(favourite):
    task = FewShotSentiment(per_label=10)
    result = task.evaluate(ConstantRunner(tokenizer(), favourite))
    assert result.metrics["fewshot_accuracy"] == pytest.approx(1 / 3)
    assert result.metrics["fewshot_macro_f1"] <= 1 / 6 + 1e-6
    book = floors.load(floors.DEFAULT_FLOORS, registry.MODELS, registry.METHODS)
    families = {name: m.family for name, m in registry.METHODS.items()}
    for model_id, spec in registry.MODELS.items():
        if task.id in spec.tasks:
            violations = floors.check(book.floor_for(model_id, "fp32", families), result.metrics, result.metrics, None)
            assert {"min.fewshot_accuracy", "min.fewshot_macro_f1"} <= {v.rule for v in violations}, model_id


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


def label_share(part):
    return torch.bincount(torch.tensor([e.label for e in part]), minlength=3).float() / len(part)


def normalized(*parts):
    return {normalize(e.text) for part in parts for e in part}


def test_tweet_splits_are_stratified_seeded_and_disjoint():
    splits = tweets.load_splits()
    assert (len(splits.validation), len(splits.test)) == (600, 1201)
    texts = [{e.text for e in part} for part in (splits.train, splits.validation, splits.test)]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    torch.testing.assert_close(label_share(splits.test), label_share(splits.train), atol=0.01, rtol=0)
    examples = [Example(str(i), i % 3) for i in range(90)]
    assert stratified_split(examples, (9, 9), 1) == stratified_split(examples, (9, 9), 1)


def test_no_near_duplicate_crosses_the_splits():
    splits = tweets.load_splits()
    test, validation, train = normalized(splits.test), normalized(splits.validation), normalized(splits.train)
    assert not test & (train | validation) and not validation & train
    assert len(test) == len(splits.test)  # deduplicated within the split too
    # the measured count of copies before deduplication existed (88 of 1,201 test tweets): the fingerprint
    # records what went, so splits from before it are never reused
    assert splits.removed["duplicates"] > 800 and splits.fingerprint()["removed"] == splits.removed


def test_normalize_removes_what_makes_copies_look_different():
    original = normalize("@united Flight 353 delayed AGAIN!! http://t.co/abc")
    assert original == normalize("RT @AmericanAir: flight 435 delayed again https://t.co/xyz") == "flight delayed again"
    assert normalize("@jetblue") == ""


def test_deduplicate_keeps_the_first_of_the_majority_and_drops_ties():
    rows = [Example("Thanks!", 1), Example("thanks", 2), Example("@a THANKS", 2), Example("tie one", 0),
            Example("tie one!", 1), Example("other", 0)]
    kept, removed = deduplicate(rows)
    assert kept == [Example("thanks", 2), Example("other", 0)]
    assert removed == {"duplicates": 2, "ambiguous": 2}


def test_hard_split_is_disjoint_fixed_size_and_three_class():
    splits = tweets.load_splits()
    hard = normalized(splits.hard)
    assert len(splits.hard) == tweets.HARD_SIZE and len(hard) == len(splits.hard)
    assert not hard & normalized(splits.train, splits.validation, splits.test)  # calibration is train[:n]
    assert (label_share(splits.hard) > 0.1).all()
    assert splits.fingerprint()["sizes"][3] == tweets.HARD_SIZE


def test_tweet_sentiment_reports_both_splits_on_a_tiny_model():
    runner = TorchRunner(tiny_bert_classifier(train_steps=0, hidden_size=32), tokenizer(), "cpu", "classifier")
    task = TweetSentiment()
    result = task.evaluate(runner)
    assert set(result.metrics) == set(task.metrics) == {"accuracy", "macro_f1", "hard_accuracy", "hard_macro_f1"}
    assert all(metrics.direction(name) == 1 for name in task.metrics)
    assert result.reference_logits.shape[0] == len(tweets.load_splits().test)  # fidelity: the easy split
    shares = result.details["predicted_labels"]
    assert set(shares) == {"test", "hard"} and all(set(s) == set(tweets.LABELS) for s in shares.values())
    assert all(sum(s.values()) == pytest.approx(1, abs=1e-3) for s in shares.values())
    assert result.details["n_hard"] == tweets.HARD_SIZE


def test_minilm_baseline_head_is_seeded():
    # the fine-tune starts from a new classification head: it must be the same every build
    from compresslab.models.embedded import MiniLMTweetClassifier

    source = MiniLMTweetClassifier()
    first, second = source.initial_model(), source.initial_model()
    assert torch.equal(first.classifier.weight, second.classifier.weight)
    assert first.classifier.weight.shape == (3, 384)
