"""The default search at full size, for one GPU/TPU: all 5,000 validation images, 2,048 fit
images, a population of 64 for 30 generations, evaluated by the fused population program.

    modulenet search --config configs/cifar10_resnet_gpu.py --out runs/cifar10_resnet_gpu

Everything else (knowledge base, data, space, protocol) is `cifar10_resnet.py`'s.
"""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("cifar10_resnet", Path(__file__).with_name("cifar10_resnet.py"))
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)


def get_config():
    c = _base.get_config()
    c.data.val_size = 5000
    c.protocol.fit_images = 2048
    c.protocol.stitch_images = 512
    c.search.population = 64
    c.search.generations = 30
    c.final.size = None
    c.evaluator.strategy = "auto"
    return c
