"""`benchmarks/driver_agreement.py`: both drivers on the same random networks and split (on the
tests' networks they count exactly the same), and the roundings that once set them apart on real ones."""

import jax
import jax.numpy as jnp
import numpy as np

from modulenet_jax.assemble import preprocess
from modulenet_jax.benchmarks.driver_agreement import counts
from tests.test_runner import small_run


def test_both_drivers_count_the_same_random_networks(tiny_kb, tiny_dataset):
    run = small_run(tiny_kb, tiny_dataset, ["protocol.head=ridge"])
    pairs = counts(run, 3, seed=0)
    assert len(pairs) == 3 and all(a == b for a, b in pairs) and sum(a for a, _ in pairs) > 0
    assert len({a for a, _ in pairs}) > 1  # three different networks, not one evaluated thrice


def test_preprocessing_rounds_alike_inside_the_fused_programs_loop():
    """The fused program preprocesses the (shared) fit images inside `lax.map` over genotypes, the
    per-module driver in a program of its own: bit for bit the same. (`x / 255 - mean` was
    contracted into an FMA in the second only, the invariant `x / 255` being hoisted out of the loop.)"""
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (64, 8, 8, 3), dtype=np.uint8))
    mean, std = jnp.asarray([0.485, 0.456, 0.406]), jnp.asarray([0.229, 0.224, 0.225])
    alone = jax.jit(preprocess)(images, mean, std)
    looped = jax.jit(lambda x, m, s: jax.lax.map(lambda ms: preprocess(x, *ms), (m, s)))(
        images, jnp.stack([mean, mean]), jnp.stack([std, std]))
    for x in looped:
        np.testing.assert_array_equal(np.asarray(x), np.asarray(alone))
