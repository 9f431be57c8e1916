"""The compression matrix: one benchmark per model x method (chain), ids ``<model>-<method>``.

    pytest benchmarks/ -k "smollm2 and int8"

Set COMPRESSLAB_MATRIX="model:method,method;model2:method" to run other chains without editing this file.
"""

import pytest

from compresslab.matrix import selected_matrix
from compresslab.plugin import case_params


@pytest.mark.parametrize("compressed", case_params(selected_matrix()), indirect=True)
def test_compression(compressed, benchmark):
    compressed.time(benchmark)
    compressed.check_floors()
