import importlib
import re
import sys

import pytest

from compresslab import code_digest, registry
from compresslab.cache import ArtifactCache
from compresslab.matrix import parse_matrix
from compresslab.methods.base import MethodUnsupported
from compresslab.methods.dtype import DtypeCast
from compresslab.methods.gptq import GPTQ
from compresslab.methods.oneshot_sparsity import OneShotSparsity
from compresslab.methods.pruning import MagnitudePrune
from compresslab.methods.torchao_quant import TorchaoQuant
from compresslab.methods.tp_prune import TorchPruningPrune
from compresslab.models.spec import ModelSpec
from compresslab.pipeline import Pipeline, parse_chain
from tiny import TinySource


def check_registry() -> None:
    """Every name the registry's matrices and tiers use is bound, and every row can run on its model."""
    for model_id, spec in registry.MODELS.items():
        assert spec.id == model_id
        assert all(task in registry.TASKS for task in spec.tasks)
    assert set(registry.FULL_MATRIX) == set(registry.MODELS), "the full matrix is every registered model"
    for model_id, chains in registry.SMOKE_MATRIX.items():
        assert model_id in registry.MODELS, f"smoke-tier model {model_id!r} is not registered"
        assert set(chains) <= set(registry.FULL_MATRIX[model_id]), model_id
    kinds = {spec.kind for spec in registry.MODELS.values()}
    assert set(registry.DEFAULT_TIER) <= kinds, f"default tier for unknown kinds {set(registry.DEFAULT_TIER) - kinds}"
    for kind, chains in registry.DEFAULT_TIER.items():
        for chain in chains:
            for method_id in parse_chain(chain, registry.METHODS):
                method = registry.METHODS[method_id]
                assert kind in method.kinds and "cpu" in method.devices, f"{chain}: {method_id} cannot run on a {kind}"
    for chains in registry.FULL_MATRIX.values():
        for chain in chains:
            parse_chain(chain, registry.METHODS)
    assert registry.METHODS[registry.BASELINE_METHOD].identity


def test_registry_is_consistent():
    check_registry()


@pytest.mark.parametrize("table, key, value, error", [
    ("SMOKE_MATRIX", "gpt2", ("fp32",), "smoke-tier model 'gpt2' is not registered"),
    ("DEFAULT_TIER", "classifier", ("fp32", "int3"), "unknown method 'int3'"),
    ("DEFAULT_TIER", "classifier", ("fp32", "gptq-w4g128"), "gptq-w4g128 cannot run on a classifier"),
    ("DEFAULT_TIER", "encoder-decoder", ("fp32",), "default tier for unknown kinds"),
    ("FULL_MATRIX", "gpt2", ("fp32",), "the full matrix is every registered model"),
])
def test_a_broken_registry_fails_the_consistency_check(monkeypatch, table, key, value, error):
    monkeypatch.setitem(getattr(registry, table), key, value)
    with pytest.raises((AssertionError, KeyError), match=re.escape(error)):
        check_registry()


def mislabelled(methods) -> list[str]:
    """Ids that say something their config does not (prune-l1-50: 50% per layer; gptq-w4g128: 4 bits,
    groups of 128): a config edited under an unchanged id would mislabel every report row."""
    wrong = []
    for method_id, method in methods.items():
        fraction = getattr(method, "sparsity", getattr(method, "fraction", None))
        percent = re.search(r"-(\d+)$", method_id)
        if fraction is not None and percent and fraction != int(percent[1]) / 100:
            wrong.append(f"{method_id}: {fraction}")
        pattern = getattr(method, "pattern", getattr(method, "mask_structure", None))
        if pattern is not None and ("2of4" in method_id) != (pattern == "2:4"):
            wrong.append(f"{method_id}: pattern {pattern}")
        scope = "layer" if "-l1-" in method_id else "global" if re.search("-(global|iter)-", method_id) else None
        if scope and method.scope != scope:
            wrong.append(f"{method_id}: scope {method.scope}")
        if hasattr(method, "rounds") and ("-iter-" in method_id) != (method.rounds > 1):
            wrong.append(f"{method_id}: {method.rounds} rounds")
        if hasattr(method, "algorithm") and not method_id.startswith(method.algorithm):
            wrong.append(f"{method_id}: algorithm {method.algorithm}")
        if hasattr(method, "scheme") and method.scheme != method_id:
            wrong.append(f"{method_id}: scheme {method.scheme}")
        width = re.search(r"w(\d+)g(\d+)", method_id)
        # OpenVINO's weight compression names its width in the mode (ov-w4g32-asym: int4-weights)
        bits = getattr(method, "bits", None) or {"int4-weights": 4, "int8-weights": 8}.get(
            getattr(method, "compression", None))
        if width and (bits, method.group_size) != (int(width[1]), int(width[2])):
            wrong.append(f"{method_id}: {bits} bits, groups of {method.group_size}")
    return wrong


def test_method_ids_say_what_their_configs_do():
    assert not mislabelled(registry.METHODS)


@pytest.mark.parametrize("method_id, config", [
    ("prune-l1-50", MagnitudePrune(sparsity=0.3)), ("prune-global-50", MagnitudePrune(sparsity=0.5)),
    ("sparsegpt-2of4", OneShotSparsity(algorithm="sparsegpt")), ("wanda-50", OneShotSparsity(algorithm="sparsegpt")),
    ("gptq-w4g128", GPTQ(bits=8, group_size=128)), ("int8-weight", TorchaoQuant(scheme="int8-dynamic")),
    ("tp-prune-30", TorchPruningPrune(fraction=0.5)),
])
def test_a_mislabelled_method_is_found(method_id, config):
    found = mislabelled({**registry.METHODS, method_id: config})
    assert found and all(line.startswith(f"{method_id}: ") for line in found), found


def test_unknown_ids_list_the_valid_ones_sorted(monkeypatch):
    monkeypatch.setitem(registry.MODELS, "a-late-addition", registry.MODELS["minilm-sentiment"])
    for kind, lookup, table in [("model", registry.get_model, registry.MODELS),
                                ("method", registry.get_method, registry.METHODS)]:
        with pytest.raises(KeyError) as raised:
            lookup("gpt2")
        assert raised.value.args[0] == f"unknown {kind} 'gpt2'; valid: {', '.join(sorted(table))}"


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
from compresslab.methods.gptq import GPTQ
from compresslab.methods.oneshot_sparsity import OneShotSparsity
from compresslab.methods.pruning import MagnitudePrune


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


def test_format_providers_are_the_chain_s_modules_that_register_a_saved_format(tmp_path):
    """What a fresh process (the memory probe) imports so saved formats registered by methods load;
    nothing for a chain whose checkpoints transformers or models/formats.py reload."""
    pipeline = Pipeline(ArtifactCache(tmp_path), registry.METHODS)
    assert pipeline.format_providers("hqq-w4g64") == ("compresslab.methods.hqq",)
    assert pipeline.format_providers("distill-half+hqq-w4g64") == ("compresslab.methods.hqq",)
    assert pipeline.format_providers("distill-half+int8-dynamic") == ()
    with pytest.raises(KeyError, match="nope"):
        pipeline.format_providers("fp32+nope")
