"""compresslab: a pytest plugin and benchmark suite for compressing and accelerating language models."""

__version__ = "0.1.0"
