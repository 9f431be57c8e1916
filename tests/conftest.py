import pytest

pytest_plugins = ["pytester"]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    # Never touch a user's real artifact cache from unit tests.
    monkeypatch.setenv("COMPRESSLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("COMPRESSLAB_MATRIX", raising=False)
