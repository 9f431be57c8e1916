"""The benchmark module the plugin's end-to-end tests write into a pytester directory: the same
``test_compression`` as benchmarks/, over a matrix of the test's own choosing."""

BENCH_TEMPLATE = """
import pytest
from compresslab.plugin import case_params

@pytest.mark.parametrize("compressed", case_params({matrix!r}), indirect=True)
def test_compression(compressed, benchmark):
    compressed.time(benchmark)
    compressed.check_floors()
"""


def bench_file(matrix: dict[str, tuple[str, ...]]) -> str:
    """The source of a benchmark module whose cases are ``matrix`` ({model id: chain ids}), each
    timed and then checked against its floors."""
    return BENCH_TEMPLATE.format(matrix=matrix)
