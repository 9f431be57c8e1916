import pytest

pytest_plugins = ["pytester"]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    # Never touch a user's real artifact cache from unit tests.
    monkeypatch.setenv("COMPRESSLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("COMPRESSLAB_MATRIX", raising=False)
    monkeypatch.delenv("COMPRESSLAB_REMOTE_CACHE", raising=False)  # nor a user's shared remote cache


@pytest.fixture(autouse=True)
def _small_roofline_probe(monkeypatch):
    # The plugin probes the machine before a session's first case (about 1.5 s at full size): the
    # many in-process pytester sessions here probe small sizes (tests/test_roofline.py checks the probe).
    from compresslab.trackers import roofline

    small = roofline.ProbeSizes(gemm_n={"fp32": 128, "bf16": 128, "int8": 128}, stream_bytes=1 << 22, warmup=1, reps=2)
    real = roofline.probe
    monkeypatch.setattr(roofline, "probe", lambda device="cpu", sizes=None: real(device, sizes or small))
