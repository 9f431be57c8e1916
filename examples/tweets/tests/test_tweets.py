"""The project's own benchmarks: compresslab's ``compressed`` fixture in a test file of ours.

``compressed`` is built (and cached), evaluated on our tasks and handed over; pytest-benchmark's
``benchmark`` times it; ``check_floors`` holds it to the floors in pyproject.toml.
"""

import pytest


def test_matrix(compressed, benchmark):
    """Every case of [tool.compresslab.matrix]: ids like tweet-sentiment-int8-dynamic for -k."""
    compressed.time(benchmark)
    compressed.check_floors()


@pytest.mark.compresslab(models="tweet-tags", methods=["fp32", "int8-dynamic"])
def test_tags_threshold_is_tuned_per_model(compressed):
    """A check of our own beside the floors: each model's tag threshold was tuned on validation."""
    details = compressed.result.task_details["tags"]
    assert details["threshold_tuned"] and 0.05 <= details["threshold"] <= 0.95
