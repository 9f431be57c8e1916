"""Code digests follow a module's source and the compresslab modules it imports, nothing else.

Edits happen in temporary modules: a directory appended to ``compresslab.__path__`` makes its
files ``compresslab.<name>`` modules, so the real following rules apply without touching the
repository's files.
"""

import importlib
import logging
import sys
import types

import pytest

import compresslab
from compresslab import code_digest, registry
from compresslab.code_digest import NO_SOURCE_MARK, NOT_FOLLOWED_MARK, module_digest, module_sources, object_digest


@pytest.fixture
def extra_modules(tmp_path, monkeypatch):
    """write(name, source): (re)write the temporary module ``compresslab.<name>``."""
    monkeypatch.setattr(compresslab, "__path__", [*compresslab.__path__, str(tmp_path)])

    def write(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text(source)
        importlib.invalidate_caches()  # the path finder caches directory listings
        code_digest.clear_cache()  # a process caches digests: simulate the next run
        return f"compresslab.{name}"

    yield write
    code_digest.clear_cache()


def test_digest_changes_with_own_source_and_imported_modules_only(extra_modules):
    root = extra_modules("digestfix_a", "from compresslab.digestfix_b import helper\n")
    extra_modules("digestfix_b", "def helper():\n    return 1\n")
    extra_modules("digestfix_c", "UNRELATED = 1\n")
    before = module_digest(root)

    extra_modules("digestfix_c", "UNRELATED = 2\n")
    assert module_digest(root) == before
    extra_modules("digestfix_b", "def helper():\n    return 2\n")
    after_helper = module_digest(root)
    assert after_helper != before
    extra_modules("digestfix_a", "from compresslab.digestfix_b import helper  # fixed\n")
    assert module_digest(root) not in (before, after_helper)


def test_follows_relative_lazy_and_transitive_imports(extra_modules):
    root = extra_modules("digestfix_a", "from . import digestfix_b\n")
    extra_modules("digestfix_b", "def load():\n    from .digestfix_c import VALUE\n    return VALUE\n")
    extra_modules("digestfix_c", "import torch\nVALUE = 1\n")
    # ``from compresslab import digestfix_b`` follows the submodule, not compresslab/__init__.py;
    # torch is third-party (its version enters the keys instead)
    assert list(module_sources(root)) == [root, "compresslab.digestfix_b", "compresslab.digestfix_c"]
    before = module_digest(root)
    extra_modules("digestfix_c", "import torch\nVALUE = 2\n")
    assert module_digest(root) != before


def test_imported_package_attribute_follows_the_package_init(extra_modules):
    root = extra_modules("digestfix_a", "from compresslab import __version__\n")
    assert set(module_sources(root)) == {root, "compresslab"}


def test_presentation_modules_are_listed_but_not_read(extra_modules):
    root = extra_modules("digestfix_a", "from compresslab.report import format_table\nimport compresslab.plugin\n")
    sources = module_sources(root)
    assert sources["compresslab.report"] == sources["compresslab.plugin"] == NOT_FOLLOWED_MARK


def test_a_module_without_source_is_marked_with_a_warning(monkeypatch, caplog):
    module = types.ModuleType("digestfix_no_file")  # no file, no __spec__: as if made in memory
    monkeypatch.setitem(sys.modules, module.__name__, module)
    code_digest.clear_cache()
    with caplog.at_level(logging.WARNING, logger="compresslab.code_digest"):
        assert module_sources(module.__name__) == {module.__name__: NO_SOURCE_MARK}
    assert "digestfix_no_file" in caplog.text
    code_digest.clear_cache()


def test_each_method_digest_covers_its_own_module_and_shared_helpers():
    bnb = module_sources(type(registry.METHODS["bnb-nf4"]).__module__)
    torchao = module_sources(type(registry.METHODS["int8-dynamic"]).__module__)
    shared = {"compresslab.methods.base", "compresslab.models.loading", "compresslab.models.spec"}
    assert shared <= set(bnb) & set(torchao)
    assert "compresslab.methods.bnb" in bnb and "compresslab.methods.bnb" not in torchao
    assert "compresslab.methods.torchao_quant" in torchao and "compresslab.methods.torchao_quant" not in bnb
    assert object_digest(registry.METHODS["bnb-nf4"]) == object_digest(registry.METHODS["bnb-int8"])
    assert object_digest(registry.METHODS["bnb-nf4"]) != object_digest(registry.METHODS["int8-dynamic"])


def test_the_embedded_baseline_digest_covers_its_fine_tune():
    sources = module_sources(type(registry.MODELS["minilm-sentiment"].source).__module__)
    assert {"compresslab.models.embedded", "compresslab.models.finetune", "compresslab.tasks.tweets"} <= set(sources)
    assert not any(name.startswith("compresslab.methods.bnb") for name in sources)
