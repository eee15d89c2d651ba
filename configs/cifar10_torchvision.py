"""Mixed-family search on CIFAR-10 over torchvision's ImageNet models.

    modulenet search --config cifar10_torchvision --out runs/cifar10_torchvision

Knowledge base: torchvision's resnet18, resnet34, vgg11_bn and mobilenet_v2 with their
`DEFAULT` ImageNet weights, fetched by torchvision's own download mechanism (cached under
$TORCH_HOME; files already in `knowledge.weights_dirs` are used first), converted and cut
into modules at `knowledge.input_size` px. Data: CIFAR-10 from TFDS. The 32 px images are
resized to `protocol.input_size` (the same number) before the first module. Space: the mixed
space (`modulenet_jax/mixed_space.py`: slots by reduction level, any family's block where
the reduction and resolution fit, 1x1 least-squares stitches where the channels differ).
Objectives: error, parameters and FLOPs. Produces the usual run folder (history, Pareto
front JSON/PNG, final table with every source under the same protocol).

Offline (no network: random weights, the shared JPEG copy of CIFAR-10, small sizes; the
accuracy means nothing, but every shape, stitch and step runs):

    modulenet search --config cifar10_torchvision --out runs/cifar10_torchvision_offline \\
        --set knowledge.weights=random data.source=../shared/data/cifar10-jpeg knowledge.input_size=32 \\
              protocol.fit_images=256 protocol.stitch_images=128 protocol.batch_size=128 \\
              protocol.head_steps=30 protocol.stitch_steps=2 data.val_size=256 final.size=256 \\
              search.population=6 search.generations=2

(`stitch_images` = `batch_size` keeps one batch shape, so each module compiles once.)
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.source = "cifar10"            # TFDS name, or a folder with train/ and test/ ImageFolders
    c.data.data_dir = ml_collections.FieldReference(None, field_type=str)
    c.data.fit_seed = 0
    c.data.val_size = 1000

    size = ml_collections.FieldReference(64, field_type=int)  # one number for the KB and the protocol

    c.knowledge = ml_collections.ConfigDict()
    c.knowledge.path = ml_collections.FieldReference(None, field_type=str)
    c.knowledge.sources = ("tv_resnet18", "tv_resnet34", "tv_vgg11_bn", "tv_mobilenet_v2")
    c.knowledge.weights = "DEFAULT"      # a torchvision weights name, or "random"
    c.knowledge.weights_seed = 0         # torch seed of "random" weights (source i gets seed + i)
    c.knowledge.weights_dirs = ()        # folders holding torchvision's .pth files, searched first
    c.knowledge.input_size = size

    c.space = ml_collections.ConfigDict()
    c.space.kind = "mixed"
    c.space.max_depth = 3                # stride-1 blocks per reduction level
    c.space.min_reduction = 16           # every network reaches at least this output stride
    c.space.sources = ()

    c.protocol = ml_collections.ConfigDict()
    c.protocol.stitch = True
    c.protocol.stitch_images = 512
    c.protocol.stitch_ridge = 1e-3
    c.protocol.stitch_steps = 0          # > 0: Adam steps on stitches + head, convs frozen
    c.protocol.stitch_lr = 1e-4
    c.protocol.bn = "from_junction"      # as cifar10_resnet (chosen by the fidelity measurement)
    c.protocol.head = "logistic"
    c.protocol.head_l2 = 1e-3
    c.protocol.head_ridge = 1e-3
    c.protocol.head_steps = 100
    c.protocol.fit_images = 1024
    c.protocol.batch_size = 250
    c.protocol.dtype = "float32"
    c.protocol.input_size = size

    c.evaluator = ml_collections.ConfigDict()
    c.evaluator.strategy = "auto"        # the mixed space always takes the per-module loop
    c.evaluator.chunk_size = ml_collections.FieldReference(None, field_type=int)
    c.evaluator.group = ml_collections.FieldReference(None, field_type=int)  # None: 1 on CPU, the chunk on GPU/TPU
    c.evaluator.prefix_memory_mb = 2048   # module path: most memory kept for prefixes shared by a generation

    c.search = ml_collections.ConfigDict()
    c.search.algorithm = "nsga2"
    c.search.population = 12
    c.search.generations = 8
    c.search.objectives = ("error", "params", "flops")
    c.search.seed_sources = True
    c.search.crossover = "stage"         # whole reduction levels from one parent ("uniform": gene by gene)
    c.search.crossover_prob = 0.9
    c.search.mutation_prob = ml_collections.FieldReference(None, field_type=float)
    c.search.continue_run_prob = 0.5
    c.search.immigrants = 0                # fresh samples among each generation's offspring
    c.search.shrink_prob = 0.25            # offspring that are a parent one block shorter (docs/RESULTS.md §5)

    c.final = ml_collections.ConfigDict()
    c.final.split = "final"
    c.final.size = ml_collections.FieldReference(None, field_type=int)
    return c
