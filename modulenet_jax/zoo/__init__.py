"""Architectures as pure functions over parameter pytrees, registered by name.

Importing this package registers every family (one file per family).
"""

from modulenet_jax.zoo import cifar_resnet  # noqa: F401  (registers the family)
from modulenet_jax.zoo import (tv_convnext, tv_densenet, tv_efficientnet, tv_mobilenet,  # noqa: F401
                               tv_resnet, tv_vgg)
from modulenet_jax.zoo.registry import (ModelDef, ModuleSpec, apply_module, flat_param_shapes, flat_shapes,
                                        fold_batch_norms, forward, get_model, get_op, list_models, op_of,
                                        param_shapes, register_model, register_op, run_op, zeroed_residual)

__all__ = ["ModelDef", "ModuleSpec", "apply_module", "flat_param_shapes", "flat_shapes", "fold_batch_norms",
           "forward", "get_model", "get_op", "list_models", "op_of", "param_shapes", "register_model", "register_op",
           "run_op", "zeroed_residual"]
