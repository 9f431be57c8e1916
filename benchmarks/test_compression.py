"""The compression matrix: one benchmark per model x method (chain), ids ``<model>-<method>``.

    pytest benchmarks/ -k "smollm2 and int8"
    pytest benchmarks/ --compresslab-tier full     # every row (default: the default tier)
    pytest benchmarks/ -m "not slow"               # the same as the default tier

The plugin parametrizes ``compressed`` with the run's cases: COMPRESSLAB_MATRIX="model:method,method;
model2:method" when set (that list runs as given, whatever its tiers, unless --compresslab-tier is set
too), else the project's matrix (compresslab's registry here). A project's own test is the same
function; see the README's "Benchmark your own model".
"""


def test_compression(compressed, benchmark):
    compressed.time(benchmark)
    compressed.check_floors()
