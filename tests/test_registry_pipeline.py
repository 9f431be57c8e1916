import importlib
import re
import sys

import pytest

from compresslab import code_digest, registry
from compresslab.cache import ArtifactCache
from compresslab.matrix import parse_matrix
from compresslab.methods.base import MethodUnsupported
from compresslab.methods.dtype import DtypeCast
from compresslab.methods.torchao_quant import TorchaoQuant
from compresslab.models.spec import ModelSpec
from compresslab.pipeline import Pipeline, parse_chain
from tiny import TinySource


def test_registry_is_consistent():
    for model_id, spec in registry.MODELS.items():
        assert spec.id == model_id
        assert all(task in registry.TASKS for task in spec.tasks)
    for chains in registry.FULL_MATRIX.values():
        for chain in chains:
            parse_chain(chain, registry.METHODS)
    assert registry.METHODS[registry.BASELINE_METHOD].identity


def test_unknown_ids_list_the_valid_ones():
    with pytest.raises(KeyError, match="unknown model 'gpt2'; valid: bert-base-emotion, minilm-sentiment"):
        registry.get_model("gpt2")
    with pytest.raises(KeyError, match="unknown method 'int3'; valid: awq-w4g128, awq-w4g64, bf16"):
        registry.get_method("int3")


@pytest.mark.parametrize("chain, expected", [
    ("fp32", ("fp32",)),
    ("bf16+int8-weight", ("bf16", "int8-weight")),
    (" bf16 + int8-dynamic ", ("bf16", "int8-dynamic")),
])
def test_parse_chain(chain, expected):
    assert parse_chain(chain, registry.METHODS) == expected


@pytest.mark.parametrize("chain, needle", [("", "malformed"), ("bf16+", "malformed"), ("bf16++int8-weight", "malformed"),
                                           ("bf16+gptq", "unknown method 'gptq' in chain 'bf16+gptq'")])
def test_parse_chain_rejects(chain, needle):
    with pytest.raises((KeyError, ValueError), match=re.escape(needle)):
        parse_chain(chain, registry.METHODS)


def test_configs_reject_bad_values():
    with pytest.raises(ValueError, match="dtype must be one of bfloat16, float16, got 'int7'"):
        DtypeCast(dtype="int7")
    with pytest.raises(ValueError, match="scheme must be one of int8-dynamic, int8-weight"):
        TorchaoQuant(scheme="int4")
    with pytest.raises(AttributeError):  # frozen: a config cannot drift after it was hashed into a key
        registry.METHODS["bf16"].dtype = "float16"


def test_method_capabilities_fail_early():
    with pytest.raises(MethodUnsupported, match="runs on cpu, cuda, not on mps"):
        registry.METHODS["bf16"].check_supported("classifier", "mps")

    class NeedsMissing(DtypeCast):
        requires_packages = ("no_such_package_xyz",)

    with pytest.raises(MethodUnsupported, match="needs package\\(s\\) no_such_package_xyz"):
        NeedsMissing().check_supported("classifier", "cpu")


def test_matrix_env_parsing():
    matrix = parse_matrix("minilm-sentiment:fp32, bf16+int8-weight; smollm2-135m:fp32",
                          registry.MODELS, registry.METHODS)
    assert matrix == {"minilm-sentiment": ("fp32", "bf16+int8-weight"), "smollm2-135m": ("fp32",)}
    with pytest.raises(KeyError, match="unknown model 'bert'"):
        parse_matrix("bert:fp32", registry.MODELS, registry.METHODS)
    with pytest.raises(ValueError, match="should read 'model:method"):
        parse_matrix("minilm-sentiment", registry.MODELS, registry.METHODS)


def test_chain_stages_are_cached_and_prefix_reused(tmp_path):
    spec = ModelSpec("tiny", "classifier", TinySource(), ("synthetic-sentiment",), "tiny")
    pipeline = Pipeline(ArtifactCache(tmp_path), registry.METHODS)
    first = pipeline.build(spec, "bf16", "cpu")
    assert [s.name for s in first.stages] == ["base", "bf16"]
    assert all(s.built_now for s in first.stages)
    chained = pipeline.build(spec, "bf16+int8-weight", "cpu")
    assert [(s.name, s.built_now) for s in chained.stages] == [("base", False), ("bf16", False),
                                                               ("int8-weight", True)]
    assert chained.stages[1].key == first.stages[1].key
    baseline = pipeline.build(spec, "fp32", "cpu")  # identity stage: the base checkpoint itself
    assert baseline.path == first.base.payload and not baseline.built_now


def test_rebuild_rebuilds_each_key_once(tmp_path):
    spec = ModelSpec("tiny", "classifier", TinySource(), ("synthetic-sentiment",), "tiny")
    Pipeline(ArtifactCache(tmp_path), registry.METHODS).build(spec, "bf16", "cpu")
    pipeline = Pipeline(ArtifactCache(tmp_path), registry.METHODS, rebuild=True)
    assert all(s.built_now for s in pipeline.build(spec, "bf16", "cpu").stages)
    assert not any(s.built_now for s in pipeline.build(spec, "bf16", "cpu").stages)


EDITED_METHOD = """from dataclasses import dataclass

from compresslab.methods.dtype import DtypeCast


@dataclass(frozen=True)
class EditedCast(DtypeCast):
    pass
"""
EDITED_SOURCE = """from dataclasses import dataclass

from tiny import TinySource


@dataclass(frozen=True)
class EditedSource(TinySource):
    pass
"""


@pytest.fixture
def temporary_module(tmp_path, monkeypatch):
    """write(name, source) -> the imported module; later writes are edits the digests must see."""
    monkeypatch.syspath_prepend(str(tmp_path))
    written = []

    def write(name: str, source: str):
        (tmp_path / f"{name}.py").write_text(source)
        code_digest.clear_cache()  # digests are cached per process: an edit is seen by the next run
        written.append(name)
        return importlib.import_module(name)

    yield write
    for name in written:
        sys.modules.pop(name, None)
    code_digest.clear_cache()


def test_an_edited_method_rebuilds_its_stages_and_reuses_the_others(tmp_path, temporary_module):
    module = temporary_module("digest_edited_method", EDITED_METHOD)
    methods = {**registry.METHODS, "edited": module.EditedCast()}
    spec = ModelSpec("tiny", "classifier", TinySource(), ("synthetic-sentiment",), "tiny")
    Pipeline(ArtifactCache(tmp_path / "cache"), methods).build(spec, "edited+int8-weight", "cpu")
    Pipeline(ArtifactCache(tmp_path / "cache"), methods).build(spec, "bf16", "cpu")

    temporary_module("digest_edited_method", EDITED_METHOD + "# a fix\n")
    pipeline = Pipeline(ArtifactCache(tmp_path / "cache"), methods)
    edited = pipeline.build(spec, "edited+int8-weight", "cpu")
    assert [(s.name, s.built_now) for s in edited.stages] == [("base", False), ("edited", True),
                                                              ("int8-weight", True)]
    assert not pipeline.build(spec, "bf16", "cpu").built_now


def test_an_edited_model_source_rebuilds_the_baseline_and_what_follows(tmp_path, temporary_module):
    module = temporary_module("digest_edited_source", EDITED_SOURCE)
    spec = ModelSpec("tiny", "classifier", module.EditedSource(), ("synthetic-sentiment",), "tiny")
    first = Pipeline(ArtifactCache(tmp_path / "cache"), registry.METHODS).build(spec, "bf16", "cpu")
    assert Pipeline(ArtifactCache(tmp_path / "cache"), registry.METHODS).build(spec, "bf16", "cpu").path == first.path

    temporary_module("digest_edited_source", EDITED_SOURCE + "# a fix\n")
    again = Pipeline(ArtifactCache(tmp_path / "cache"), registry.METHODS).build(spec, "bf16", "cpu")
    assert [(s.name, s.built_now) for s in again.stages] == [("base", True), ("bf16", True)]
    assert again.stages[0].key != first.stages[0].key
