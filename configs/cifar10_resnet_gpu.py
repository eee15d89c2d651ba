"""The default search at full size, for one GPU/TPU: all 5,000 validation images, 2,048 fit
images, a population of 64 for 30 generations, evaluated by the fused population program.

    modulenet search --config cifar10_resnet_gpu --out runs/cifar10_resnet_gpu

Everything else (knowledge base, data, space, protocol) is `cifar10_resnet`'s.
"""

from modulenet_jax.configs import cifar10_resnet


def get_config():
    c = cifar10_resnet.get_config()
    c.data.val_size = 5000
    c.protocol.fit_images = 2048
    c.protocol.stitch_images = 512
    c.protocol.batch_size = 500
    c.search.population = 64
    c.search.generations = 30
    c.final.size = None
    c.evaluator.strategy = "auto"
    return c
