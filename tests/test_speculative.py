"""Speculative decoding (models/speculative.py, methods/speculative.py): the output is the target's plain
greedy output token for token whatever the draft; the acceptance follows the draft's quality; the KV
cache rolls back exactly; a broken verifier is caught by the exactness check; the pipeline builds the
draft as the distill row's own stage and the artifact reloads as target plus draft."""

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from compresslab import floors
from compresslab.cache import ArtifactCache
from compresslab.fixture import Case
from compresslab.methods.base import MethodUnsupported
from compresslab.methods.distill import LayerDropDistill, make_student
from compresslab.methods.speculative import SpeculativeDecoding
from compresslab.models.decoding import greedy
from compresslab.models.finetune import FinetuneConfig, TrainBudget
from compresslab.models.runner import TorchRunner
from compresslab.models.spec import ModelSpec
from compresslab.models.speculative import (SpeculativeRunner, check_exact, forward, load_case_runner,
                                            longest_agreeing_prefix, rollback, speculative_greedy)
from compresslab.pipeline import Pipeline
from compresslab.results import CaseResult
from compresslab.trackers.decode import time_speculative
from compresslab.models.loading import save_tokenizer
from tiny import calibration_texts, tiny_llama, tokenizer

NEW_TOKENS = 12


def runner_of(model) -> TorchRunner:
    return TorchRunner(model.eval(), tokenizer(), "cpu", "causal-lm")


def untrained_llama(seed: int, layers: int):
    """Untrained and untied: its greedy output varies with the context (a trained tiny one repeats a word)."""
    return tiny_llama(train_steps=0, seed=seed, hidden_size=32, num_hidden_layers=layers, tie_word_embeddings=False)


@pytest.fixture(scope="module")
def target():
    return runner_of(untrained_llama(seed=0, layers=4))


@pytest.fixture(scope="module")
def dropped(target):
    """The target with every other block dropped: an imperfect draft of the same vocabulary."""
    return runner_of(make_student(target.model, keep_every=2)[0])


@pytest.fixture(scope="module")
def prompts():
    """Two prompts of one length (rows of a batch, as the decode workload's timed input is)."""
    return torch.tensor([[101, 1996, 3185, 2001, 2204, 102], [101, 3407, 2833, 1998, 1996, 2154]])


@pytest.fixture(scope="module")
def dropped_check(target, dropped, prompts):
    return check_exact(SpeculativeRunner(target, dropped, 4), prompts, NEW_TOKENS)


def accept_all(proposed: list[int], target: list[int]) -> int:
    """A broken verifier: keeps every draft token, whatever the target says."""
    return len(proposed)


def test_a_layer_dropped_draft_gives_the_target_s_greedy_output(target, dropped, prompts, dropped_check):
    check = dropped_check
    assert check.exact and check.mismatch is None
    assert 0 < check.acceptance_rate < 1 and check.proposed > 0  # it agrees often, not always
    assert 1 < check.tokens_per_target_forward <= 5
    # k = 2, the outputs themselves against decoding.greedy, with the run's own counts
    run = speculative_greedy(SpeculativeRunner(target, dropped, 2), prompts[1:], NEW_TOKENS)
    assert run.tokens == greedy(target, prompts[1:], NEW_TOKENS)[0].tolist() and len(run.tokens) == NEW_TOKENS
    assert run.proposed <= 2 * (run.target_forwards - 1) and run.accepted <= run.proposed
    assert run.target_forwards - 1 + run.accepted == NEW_TOKENS - 1  # each verify gives its kept drafts + 1


def test_the_target_as_its_own_draft_is_always_accepted(target, prompts):
    k = 4
    check = check_exact(SpeculativeRunner(target, target, k), prompts, NEW_TOKENS)
    assert check.exact and check.acceptance_rate == 1.0
    # every round keeps all k proposals plus the target's bonus token: k + 1 tokens per verify forward
    rounds = -(-(NEW_TOKENS - 1) // (k + 1))
    assert check.target_forwards == prompts.shape[0] * (1 + rounds)


def test_a_random_draft_is_still_exact_with_low_acceptance(target, prompts, dropped_check):
    random_draft = runner_of(untrained_llama(seed=7, layers=1))
    check = check_exact(SpeculativeRunner(target, random_draft, 3), prompts[:1], NEW_TOKENS)
    assert check.exact
    assert check.acceptance_rate < 0.1 < dropped_check.acceptance_rate
    assert check.tokens_per_target_forward < 1.2


def test_rollback_leaves_the_cache_of_the_kept_tokens(target, prompts):
    ids = prompts[0].tolist()
    _, cache = forward(target, ids, None, 1)
    _, cache = forward(target, [11, 12, 13, 14], cache, 4)  # four tokens, then three of them rejected
    rollback(cache, len(ids) + 1)
    assert cache.get_seq_length() == len(ids) + 1
    after_rollback, _ = forward(target, [21], cache, 1)
    fresh, _ = forward(target, ids + [11, 21], None, 1)
    assert torch.allclose(after_rollback, fresh, atol=1e-5)
    rollback(cache, 10_000)  # more than it holds: unchanged
    assert cache.get_seq_length() == len(ids) + 2


def test_a_verifier_that_accepts_every_draft_token_fails_the_check(target, dropped, prompts, dropped_check):
    broken = check_exact(SpeculativeRunner(target, dropped, 4, verify=accept_all), prompts, NEW_TOKENS)
    assert not broken.exact and broken.acceptance_rate == 1.0
    assert broken.mismatch.startswith("prompt 0, new token ")
    result = CaseResult()
    result.add_speculative_check(broken)
    assert result.spec_exact is False
    (violation,) = floors.check_exact(result.spec_exact, result.spec_mismatch)
    assert "differs from plain greedy" in violation.message and broken.mismatch in violation.message
    good = CaseResult()
    good.add_speculative_check(dropped_check)
    assert good.spec_exact is True and floors.check_exact(good.spec_exact, good.spec_mismatch) == []
    assert floors.check_exact(None, None) == []  # not a speculative case


def test_a_case_whose_speculative_output_differs_fails_its_floors(target, dropped, prompts, dropped_check):
    """The case fixture's floor check (fixture.Case.check_floors) on a record of the broken verifier."""
    session = SimpleNamespace(floor_for=lambda model, chain: floors.Floor(), records=[],
                              floors=SimpleNamespace(source="test floors"),
                              catalog=SimpleNamespace(expected_metrics=lambda spec: {}))
    measurement = SimpleNamespace(metrics={"perplexity": 20.0})

    def case(check) -> Case:
        result = CaseResult()
        result.add_speculative_check(check)
        return Case(session, SimpleNamespace(id="tiny-lm"), "spec-distill-half", measurement, measurement, result)

    case(dropped_check).check_floors()  # exact: passes
    broken = case(check_exact(SpeculativeRunner(target, dropped, 2, verify=accept_all), prompts[:1], 6))
    with pytest.raises(floors.BelowFloors, match="differs from plain greedy: prompt 0, new token"):
        broken.check_floors()
    assert broken.result.floor_violations[0].startswith("speculative decoding's output differs")


def test_longest_agreeing_prefix():
    assert longest_agreeing_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
    assert longest_agreeing_prefix([9, 2], [1, 2, 3]) == 0
    assert longest_agreeing_prefix([1, 2], [1, 2, 3]) == 2
    assert longest_agreeing_prefix([], [4]) == 0


def test_the_timed_workload_records_both_decoders_and_catches_a_broken_verifier(target, dropped, prompts):
    stats = time_speculative(SpeculativeRunner(target, dropped, 3), prompts, 6, rounds=1, warmup=0)
    assert stats.mismatch is None and stats.prompts == 2 and stats.tokens == 12 and stats.prompt_tokens == 6
    result = CaseResult()
    result.add_speculative_decode(stats, speedup=1.0)
    assert result.decode_tokens_per_s == stats.tokens_per_s and result.decode_new_tokens == 6
    assert result.spec_speedup_vs_greedy == pytest.approx(stats.tokens_per_s / stats.greedy_tokens_per_s)
    assert result.spec_exact is None  # the untimed check sets it; the timed rounds only break it
    broken = time_speculative(SpeculativeRunner(target, dropped, 3, verify=accept_all), prompts, 6, rounds=1,
                              warmup=0)
    result.add_speculative_decode(broken, speedup=1.0)
    assert result.spec_exact is False and result.spec_mismatch == broken.mismatch is not None


@pytest.mark.parametrize("k", [0, -1, 2.0, "4", True])
def test_bad_num_draft_tokens_is_one_line_naming_the_value(k, target):
    with pytest.raises(ValueError) as raised:
        SpeculativeDecoding(num_draft_tokens=k)
    message = str(raised.value)
    assert "\n" not in message and repr(k) in message and "integer >= 1" in message
    assert message.startswith("SpeculativeDecoding.num_draft_tokens")
    with pytest.raises(ValueError, match="num_draft_tokens must be an integer >= 1"):
        SpeculativeRunner(target, target, k)


def test_classifiers_skip_with_one_line():
    with pytest.raises(MethodUnsupported) as raised:
        SpeculativeDecoding().check_supported("classifier", "cpu")
    assert str(raised.value) == "applies to causal-lm models, not classifier"


# --- the pipeline: the draft is the distill row's own stage; the artifact reloads as target plus draft --------


@dataclass(frozen=True)
class TinyText:
    """The training text a decoder's distillation reads (a task's calibration_texts)."""

    id: str = "tiny-text"

    def fingerprint(self) -> dict[str, Any]:
        return {"task": self.id}

    def calibration_texts(self, n: int) -> list[str]:
        return calibration_texts(n)


@dataclass(frozen=True)
class UntrainedSource:
    """A BaseSource of an untrained tiny decoder (tiny.TinySource trains one, which takes longer)."""

    def check_available(self) -> None:
        pass

    def fingerprint(self) -> dict[str, Any]:
        return {"source": "untrained-tiny-llama"}

    def build(self, out) -> None:
        untrained_llama(seed=0, layers=2).save_pretrained(out)
        save_tokenizer(tokenizer(), out)


FAST = TrainBudget(classifier=FinetuneConfig(max_steps=2), causal_lm=FinetuneConfig(max_steps=3, batch_size=2,
                                                                                    max_length=32))


def test_the_pipeline_builds_the_draft_as_the_distill_stage_and_the_artifact_reloads(tmp_path, prompts):
    methods = {"distill-half": LayerDropDistill(keep_every=2, budget=FAST),
               "spec-distill-half": SpeculativeDecoding(draft="distill-half", num_draft_tokens=3),
               "spec-missing": SpeculativeDecoding(draft="no-such-method")}
    spec = ModelSpec("tiny-lm", "causal-lm", UntrainedSource(), ("tiny-text",), "tiny")
    pipeline = Pipeline(ArtifactCache(tmp_path / "cache"), methods, tasks={"tiny-text": TinyText()})
    built = pipeline.build(spec, "spec-distill-half", "cpu")
    assert [stage.name for stage in built.stages] == ["base", "distill-half", "spec-distill-half"]
    assert "train_s" in built.stages[1].records["distill"]
    # the distill row alone reuses the very stage the draft was built as
    distilled = pipeline.build(spec, "distill-half", "cpu")
    assert distilled.stages[1].key == built.stages[1].key and not distilled.built_now
    runner = load_case_runner(built.path, built.base.payload, "causal-lm", "cpu")
    assert isinstance(runner, SpeculativeRunner) and runner.num_draft_tokens == 3
    assert runner.model.config.num_hidden_layers == 2 and runner.draft.model.config.num_hidden_layers == 1
    assert runner.settings["decoding"] == "speculative" and runner.settings["draft_layers"] == 1
    # the target is the input checkpoint unchanged: the baseline's logits exactly
    base = load_case_runner(built.base.payload, built.base.payload, "causal-lm", "cpu")
    assert not isinstance(base, SpeculativeRunner)
    inputs = {"input_ids": prompts[:1]}
    assert torch.equal(runner.logits(inputs), base.logits(inputs))
    assert check_exact(runner, prompts[:1], 6).exact
    with pytest.raises(KeyError, match="unknown method 'no-such-method'.*valid: distill-half, spec-distill-half"):
        pipeline.build(spec, "spec-missing", "cpu")
