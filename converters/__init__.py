"""PyTorch checkpoints -> Flax parameter pytrees. The only package that imports torch.

PyTorch is the optional extra `torch`: without it, importing this package is a `UserError`
that says how to install it, not an ImportError from deep inside a converter.
"""

from modulenet_jax.errors import require_extra

for _module in ("torch", "torchvision"):
    require_extra(_module, "torch", "reading PyTorch checkpoints (modulenet_jax.converters)")
