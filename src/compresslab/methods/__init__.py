"""Compression methods: one module per family, each a frozen dataclass config with apply()."""
