"""PyTorch checkpoints -> Flax parameter pytrees. The only package that imports torch."""
