"""Joining a multi-process run: `jax.distributed.initialize`, then one tiny all-gather while the
processes are still in step, so that the collectives' communicator exists before any of them compiles.

Why: on CPUs the collectives are Gloo's, whose communicator is set up at the first collective with a
rendezvous that waits a fixed 30 s (jaxlib has no setting for it). The population's first collective is
the gather of a chunk's results, after its compile; a process that compiles more than 30 s after another
(a loaded or small machine) made the run fail there. The communicator, once made, is reused by every
later all-gather over the same devices, which then waits as long as the slower process needs.
"""
from __future__ import annotations

import numpy as np

from modulenet_jax.errors import UserError


def initialize(**kwargs) -> None:
    """`jax.distributed.initialize(**kwargs)` (no arguments: the cluster's environment names the
    coordinator, process count and id), then `meet()`."""
    import jax

    try:
        jax.distributed.initialize(**kwargs)
    except ValueError as e:  # no cluster environment to read them from
        raise UserError(f"--distributed found no cluster to join ({e}); run it under SLURM or on a Cloud TPU, set "
                        f"JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID, or drop --distributed") from e
    meet()


def meet() -> None:
    """One all-gather of a value per device over all of `jax.devices()`: `population.gathered` on
    `population.on_mesh`, the collective and devices with which `PopulationEvaluator` gathers its
    results. Every process must call it."""
    import jax

    from modulenet_jax.population import gathered, on_mesh, population_mesh

    ids = np.arange(jax.device_count(), dtype=np.int32)
    out, = gathered(on_mesh(population_mesh(jax.devices()), ids, True))
    if not np.array_equal(out, ids):
        raise RuntimeError(f"the processes' first all-gather returned {out}, not {ids}")
