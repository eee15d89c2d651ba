"""The default search: CIFAR-10 + the four CIFAR ResNets, sized for a 2-core CPU.

    modulenet search --config cifar10_resnet --out runs/cifar10_resnet

Knowledge base: resnet20/32/44/56 (akamaster), from the folders in `knowledge.weights_dirs`,
else the download cache, else downloaded (SHA-256 checked). Data: TFDS `cifar10`. The config
names its data and weights and holds no path of its own, so a run folder's config.json is the
same from any checkout; local copies are overrides (what `make search` passes when ../shared
is beside the checkout):

    modulenet search --config cifar10_resnet --set data.source=../shared/data/cifar10-jpeg \\
        "knowledge.weights_dirs=('../shared/weights/cifar-resnet',)"

Produces a run folder with the history, the Pareto front (JSON, PNG) and the final table
(the found networks' front + the sources on the odd test positions, same protocol). Sized for a
2-core CPU: 2,048 fit images (256 of them for the stitches), 1,000 validation and 2,000
final-test images (class-balanced subsets), a population of 12 for 8 generations;
`cifar10_resnet_gpu` is the full-size variant.
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.source = "cifar10"            # TFDS name, ImageFolder root with train/ and test/, or .npz bundle
    c.data.data_dir = ml_collections.FieldReference(None, field_type=str)
    c.data.fit_seed = 0                  # which train images the protocol fits on
    c.data.val_size = 1000               # of the 5,000 even test positions (class-balanced)

    c.knowledge = ml_collections.ConfigDict()
    c.knowledge.path = ml_collections.FieldReference(None, field_type=str)  # a saved knowledge base
    c.knowledge.sources = ("cifar_resnet20", "cifar_resnet32", "cifar_resnet44", "cifar_resnet56")
    c.knowledge.weights_dirs = ()        # folders searched for the checkpoints before the download cache

    c.space = ml_collections.ConfigDict()
    c.space.granularity = "run"
    c.space.min_depth = 1
    c.space.max_depth = ml_collections.FieldReference(None, field_type=int)
    c.space.sources = ()                 # empty: every source of the knowledge base

    c.protocol = ml_collections.ConfigDict()
    c.protocol.stitch = True
    c.protocol.stitch_images = 256
    c.protocol.stitch_ridge = 1e-3
    c.protocol.bn = "from_junction"       # source statistics up to the first junction (docs/RESULTS.md)
    c.protocol.head = "logistic"
    c.protocol.head_l2 = 1e-3
    c.protocol.head_ridge = 1e-3
    c.protocol.head_steps = 100
    c.protocol.fit_images = 2048
    c.protocol.batch_size = 500
    c.protocol.dtype = "float32"

    c.evaluator = ml_collections.ConfigDict()
    c.evaluator.strategy = "auto"         # fused population program on GPU/TPU, per-module calls on CPU
    c.evaluator.chunk_size = ml_collections.FieldReference(None, field_type=int)  # None: from device memory
    c.evaluator.group = ml_collections.FieldReference(None, field_type=int)  # None: 1 on CPU, the chunk on GPU/TPU
    c.evaluator.prefix_memory_mb = 2048   # module path: most memory kept for prefixes shared by a generation

    c.search = ml_collections.ConfigDict()
    c.search.algorithm = "nsga2"
    c.search.population = 12
    c.search.generations = 8
    c.search.objectives = ("error", "params")
    c.search.seed_sources = True
    c.search.crossover = "stage"           # whole stages from one parent ("uniform": gene by gene)
    c.search.crossover_prob = 0.9
    c.search.mutation_prob = ml_collections.FieldReference(None, field_type=float)
    c.search.continue_run_prob = 0.5
    c.search.immigrants = 0                # fresh samples among each generation's offspring
    c.search.shrink_prob = 0.25            # offspring that are a parent one block shorter (docs/RESULTS.md §5)

    c.final = ml_collections.ConfigDict()
    c.final.split = "final"
    c.final.size = ml_collections.FieldReference(2000, field_type=int)  # None: all 5,000 odd positions
    # "after fine-tune" column: every row (sources too) exported to RUN/models/NAME and trained end to
    # end with these settings (SGD + Nesterov or AdamW, cosine, CIFAR augmentation); 0 epochs: no column
    c.final.finetune = ml_collections.ConfigDict()
    c.final.finetune.epochs = 0
    c.final.finetune.images = ml_collections.FieldReference(10_240, field_type=int)  # per epoch; None: all
    c.final.finetune.batch_size = 128
    c.final.finetune.learning_rate = 0.01
    c.final.finetune.optimizer = "sgd"             # or "adamw"
    return c
