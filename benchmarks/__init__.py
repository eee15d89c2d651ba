"""Benchmarks with their PyTorch baselines (`modulenet bench`)."""
