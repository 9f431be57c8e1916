"""The compression matrix: one benchmark per model x method (chain), ids ``<model>-<method>``.

    pytest benchmarks/ -k "smollm2 and int8"
    pytest benchmarks/ --compresslab-tier full     # every row (default: the default tier)
    pytest benchmarks/ -m "not slow"               # the same as the default tier

Set COMPRESSLAB_MATRIX="model:method,method;model2:method" to run other chains without editing this file
(that list runs as given, whatever its tiers, unless --compresslab-tier is set too).
"""

import os

import pytest

from compresslab.matrix import ENV, selected_matrix
from compresslab.plugin import case_params


@pytest.mark.parametrize("compressed", case_params(selected_matrix(), tiered=not os.environ.get(ENV)), indirect=True)
def test_compression(compressed, benchmark):
    compressed.time(benchmark)
    compressed.check_floors()
