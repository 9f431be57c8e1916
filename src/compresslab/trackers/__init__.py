"""Small, separate measurement modules: latency, memory, size, fidelity."""
