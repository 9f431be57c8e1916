"""Vocabulary trimming on a tiny BERT classifier: the trimmed model answers exactly as before on
texts whose pieces were kept, dropped pieces become kept pieces or [UNK] as documented, the OOV
rate counts what was dropped, every later stage (ONNX export, its calibration, the runner) uses
the trimmed tokenizer, and the graph runtimes' 4-bit embedding option really stores 4-bit tables."""

from types import SimpleNamespace

import pytest
import torch

from compresslab.cases import CaseRunner
from compresslab.methods.base import MethodUnsupported
from compresslab.methods.onnx_export import MODEL_FILE, OrtExport, calibration_feeds
from compresslab.methods.openvino import OpenVinoExport
from compresslab.methods.vocab_trim import VocabTrim, oov_rate, trimmed_pipeline
from compresslab.models.loading import load_pretrained, load_tokenizer, save_tokenizer
from compresslab.models.runner import load_runner
from compresslab.pipeline import apply_stage
from tiny import stage_context, synthetic_examples, tiny_bert_classifier, tokenizer

KEPT_TEXTS = [e.text for e in synthetic_examples(16, seed=3)]  # training texts (the trim scans 256)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("fp32")
    tiny_bert_classifier(train_steps=20).save_pretrained(path)
    save_tokenizer(tokenizer(), path)
    return path


def trimmed_with(tmp_path_factory, base, method: VocabTrim):
    out = tmp_path_factory.mktemp("trimmed")
    method.apply(base, out, stage_context(base))
    return out


@pytest.fixture(scope="module")
def trimmed(tmp_path_factory, base):
    return trimmed_with(tmp_path_factory, base, VocabTrim(training_samples=256))


def logits(artifact, base, texts):
    runner = load_runner(artifact, base, "classifier", "cpu")
    return runner.logits(dict(runner.tokenizer(texts, padding=True, return_tensors="pt")))


def same_logits(a, b) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, atol=1e-5, rtol=1e-5)


def test_trimmed_model_gives_the_same_logits_on_kept_texts(base, trimmed):
    model = load_pretrained(trimmed, "classifier")
    trimmed_tokenizer = load_tokenizer(trimmed)
    assert model.config.vocab_size == model.get_input_embeddings().num_embeddings == len(trimmed_tokenizer)
    assert len(trimmed_tokenizer) < len(tokenizer()) / 10
    assert same_logits(logits(base, base, KEPT_TEXTS), logits(trimmed, base, KEPT_TEXTS))


def test_rows_left_in_their_old_order_fail_the_same_logits_check(tmp_path, base, trimmed):
    """The check above can fail: the first n rows of the old table instead of the kept rows."""
    broken = load_pretrained(base, "classifier")
    rows = len(load_tokenizer(trimmed))
    table = broken.get_input_embeddings().weight.detach()[:rows].clone()
    broken.set_input_embeddings(torch.nn.Embedding.from_pretrained(table, freeze=True, padding_idx=0))
    broken.config.vocab_size = rows
    broken.save_pretrained(tmp_path)
    save_tokenizer(load_tokenizer(trimmed), tmp_path)
    assert not same_logits(logits(base, base, KEPT_TEXTS), logits(tmp_path, base, KEPT_TEXTS))


def test_dropped_pieces_split_into_kept_ones_or_become_unk(tmp_path_factory, base, trimmed):
    trimmed_tokenizer = load_tokenizer(trimmed)
    # an unseen ASCII word splits into kept pieces (down to letters); a word with an unseen
    # non-ASCII character becomes [UNK]
    pieces = trimmed_tokenizer.tokenize("good zebra λ")
    assert pieces[0] == "good" and "[UNK]" not in pieces[1:-1] and "".join(pieces[1:-1]).replace("##", "") == "zebra"
    assert pieces[-1] == "[UNK]"
    strict_trim = VocabTrim(training_samples=256, ascii_characters=False)
    strict = load_tokenizer(trimmed_with(tmp_path_factory, base, strict_trim))
    assert strict.tokenize("good zebra") == ["good", "[UNK]"]
    assert strict.convert_tokens_to_ids("[UNK]") == trimmed_tokenizer.convert_tokens_to_ids("[UNK]")


def test_oov_rate_counts_the_dropped_pieces(trimmed):
    trimmed_tokenizer = load_tokenizer(trimmed)
    assert tokenizer().tokenize("good zebra movie") == ["good", "zebra", "movie"]
    assert oov_rate(tokenizer(), trimmed_tokenizer, ["good zebra movie"]) == pytest.approx(1 / 3)
    assert oov_rate(tokenizer(), trimmed_tokenizer, ["good zebra movie", "the day"]) == pytest.approx(1 / 5)
    assert oov_rate(tokenizer(), trimmed_tokenizer, KEPT_TEXTS) == 0.0
    record = (trimmed / "records" / "vocab_trim.json").read_text()
    assert '"training_oov_rate": 0.0' in record


def test_the_case_records_the_test_oov_rate_of_a_trimmed_artifact_only(base, trimmed):
    task = SimpleNamespace(test_texts=lambda: ["good zebra movie"])
    cases = CaseRunner(pipeline=None, tasks={"t": task}, device="cpu", threads=1)
    spec = SimpleNamespace(tasks=("t",))
    runner = SimpleNamespace(tokenizer=load_tokenizer(trimmed))
    at = SimpleNamespace(path=trimmed, base=SimpleNamespace(payload=base))
    assert cases.test_oov_rate(spec, at, runner) == pytest.approx(1 / 3)
    baseline = SimpleNamespace(path=base, base=SimpleNamespace(payload=base))
    assert cases.test_oov_rate(spec, baseline, SimpleNamespace(tokenizer=tokenizer())) is None


@pytest.fixture(scope="module")
def ort_int8(tmp_path_factory, base, trimmed):
    """vocab-trim+ort-int8, the second stage run as the pipeline runs a stage."""
    out = tmp_path_factory.mktemp("ort-int8")
    apply_stage(OrtExport(quantization="dynamic-int8"), trimmed, out, stage_context(base))
    return out


def agreement_with_fp32(artifact, base) -> float:
    answers = logits(artifact, base, KEPT_TEXTS).argmax(-1)
    return (answers == logits(base, base, KEPT_TEXTS).argmax(-1)).float().mean().item()


def test_a_chain_through_onnx_runtime_uses_the_trimmed_tokenizer(base, trimmed, ort_int8):
    ctx = stage_context(base)
    rows = len(load_tokenizer(trimmed))
    graph = ort_int8 / MODEL_FILE
    assert max(int(feed["input_ids"].max()) for feed in calibration_feeds(graph, ctx, 8, trimmed)) < rows
    # the baseline's tokenizer numbers the same texts past the trimmed table: what the check guards
    assert max(int(feed["input_ids"].max()) for feed in calibration_feeds(graph, ctx, 8, base)) >= rows
    runner = load_runner(ort_int8, base, "classifier", "cpu")
    assert len(runner.tokenizer) == rows
    assert agreement_with_fp32(ort_int8, base) >= 0.9


def embedding_constant_types(xml) -> set[str]:
    """Element types of the constants the IR's embedding Gathers read (through their decompression)."""
    import openvino as ov

    types = set()
    for op in ov.Core().read_model(str(xml)).get_ops():
        if op.get_type_name() != "Gather":
            continue
        node = op.input_value(0).get_node()
        while node.get_type_name() in ("Convert", "Multiply", "Subtract", "Reshape"):
            node = node.input_value(0).get_node()
        if node.get_type_name() == "Constant" and len(node.get_output_shape(0)) >= 2:  # int4: rows x groups x group
            types.add(node.get_output_element_type(0).get_type_name())
    return types


def test_openvino_int4_embeddings_store_a_4_bit_table(tmp_path, base):
    ctx = stage_context(base)
    built = {}
    for name, method in {"int8": OpenVinoExport(compression="int8", calibration_samples=4),
                         "emb4": OpenVinoExport(compression="int8", calibration_samples=4, embeddings="int4")}.items():
        built[name] = tmp_path / name
        built[name].mkdir()
        method.apply(base, built[name], ctx)
    assert embedding_constant_types(built["int8"] / "model.xml") == {"i8"}  # int8 PTQ already has int8 tables
    assert embedding_constant_types(built["emb4"] / "model.xml") == {"u4"}
    assert (built["emb4"] / "model.bin").stat().st_size < 0.8 * (built["int8"] / "model.bin").stat().st_size
    assert agreement_with_fp32(built["emb4"], base) >= 0.9


def test_onnx_runtime_int4_embeddings_store_a_4_bit_table(tmp_path, base, trimmed):
    import onnx

    OrtExport(quantization="dynamic-int8", embeddings="int4").apply(trimmed, tmp_path, stage_context(base))
    graph = onnx.load(str(tmp_path / MODEL_FILE))
    tables = {init.name: init for init in graph.graph.initializer}
    gathers = [node for node in graph.graph.node if node.op_type == "GatherBlockQuantized"]
    word_table = tables[gathers[0].input[0]]  # the first Gather of a BERT reads the word embedding
    rows, width = len(load_tokenizer(trimmed)), load_pretrained(trimmed, "classifier").config.hidden_size
    assert word_table.data_type == onnx.TensorProto.UINT4
    assert len(word_table.raw_data) == rows * width // 2  # two 4-bit values a byte
    save_tokenizer(load_tokenizer(trimmed), tmp_path)  # what the pipeline carries on
    assert agreement_with_fp32(tmp_path, base) >= 0.9


def test_what_cannot_be_trimmed_or_compressed_says_why():
    with pytest.raises(MethodUnsupported, match="classifier"):
        VocabTrim().check_supported("causal-lm", "cpu")
    with pytest.raises(MethodUnsupported, match="output layer"):
        OpenVinoExport(compression="int8", embeddings="int4").check_supported("causal-lm", "cpu")
    with pytest.raises(MethodUnsupported, match="output layer"):
        OrtExport(quantization="dynamic-int8", embeddings="int4").check_supported("causal-lm", "cpu")
    with pytest.raises(MethodUnsupported, match="BPE.*valid: WordPiece"):
        trimmed_pipeline({"model": {"type": "BPE"}}, [0, 1])
    with pytest.raises(ValueError, match="None, int4, got 'int2'"):
        OpenVinoExport(embeddings="int2")
    with pytest.raises(ValueError, match="dynamic-int8"):
        OrtExport(quantization="static-int8", embeddings="int4")
    with pytest.raises(ValueError, match="min_count must be >= 1, got 0"):
        VocabTrim(min_count=0)
