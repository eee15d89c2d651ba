"""Why stitch tuning moves accuracy as it does: for networks of a fidelity report (as
`stitch_tuning.py` reads it), each setting's validation count per network and the tuning images'
cross-entropy before each step and after the last.

    python -m modulenet_jax.benchmarks.stitch_tuning_losses --networks 0 5 9 \\
        --set data.source=../shared/data/cifar10-jpeg "knowledge.weights_dirs=('../shared/weights/cifar-resnet',)" \\
        --settings adam:0:0 adam:2:0.001 adam:2:0.0001 sgd:2:0.1 sgd:2:0.01 sgd:2:0.001

A setting is `optimizer:steps:lr`: `adam` (the protocol's) or `sgd` (plain, no momentum); 0 steps is
the untuned network, the reference of the summary. `--stitch-images N` solves and tunes the stitches on
N fit images, `--stitch-ridge R` solves them with the relative ridge penalty R, `--head-l2 L` fits the
logistic head with L2 penalty L; `--stitches-only` freezes the head. Over the random networks among
those chosen (all by default) the summary gives each setting's mean accuracy, its mean change against
the first setting, the networks lowered / raised, and Kendall's tau against the report's fine-tuned
accuracy.

A diagnostic, not a protocol option: for the run, `modulenet_jax.tune`'s `optimizer` is given another
optax optimizer and its `TRAINABLE` replaced, and `protocol.tune_stitches` is wrapped to record the losses that `protocol.tune` drops.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools

import jax
import numpy as np
import optax

from modulenet_jax import protocol, tune
from modulenet_jax.errors import run_script
from modulenet_jax.evaluate import Evaluator
from modulenet_jax.ranking import kendall

from .stitch_tuning import load

OPTIMIZERS = {"adam": optax.adam, "sgd": optax.sgd}


def parse_setting(text: str) -> tuple[str, int, float]:
    """`optimizer:steps:lr` -> (optimizer, steps, lr)."""
    try:
        name, steps, lr = text.split(":")
        if name not in OPTIMIZERS:
            raise ValueError
        return name, int(steps), float(lr)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a setting is optimizer:steps:learning_rate with optimizer "
                                         f"{' or '.join(OPTIMIZERS)}, like adam:2:0.0001, got {text!r}") from None


@contextlib.contextmanager
def tuning(name: str, trainable: tuple[str, ...], losses: list):
    """Within it the protocol tunes `trainable` with optimizer `name`, appending each network's
    losses (before every step, after the last) to `losses`."""
    saved = tune.optimizer, tune.TRAINABLE, protocol.tune_stitches
    optimizer = functools.partial(saved[0], make=OPTIMIZERS[name])

    def recorded(*args, **kwargs):
        stitches, head, values = saved[2](*args, **kwargs)
        jax.debug.callback(lambda v: losses.append(np.asarray(v)), values)
        return stitches, head, values

    tune.optimizer, tune.TRAINABLE, protocol.tune_stitches = optimizer, trainable, recorded
    jax.clear_caches()  # the compiled tuning is keyed by the protocol, which the swap does not change
    try:
        yield
    finally:
        tune.optimizer, tune.TRAINABLE, protocol.tune_stitches = saved
        jax.clear_caches()


def summary(rows: list[dict], counts: dict, val_size: int) -> list[str]:
    """Per setting over the random networks: mean accuracy, mean change against the first
    setting (points), lowered / raised, tau against the fine-tune."""
    random = [i for i, r in enumerate(rows) if r["kind"] != "source"]
    first = next(iter(counts.values()))
    lines = []
    for setting, c in counts.items():
        change = np.array([c[i] - first[i] for i in random]) * 100 / val_size
        lines.append(f"{setting}: mean {100 * np.mean([c[i] for i in random]) / val_size:.2f}% over {len(random)} "
                     f"random networks, change {change.mean():+.2f} points ({(change < 0).sum()} lowered / "
                     f"{(change > 0).sum()} raised), tau "
                     f"{kendall([c[i] for i in random], [rows[i]['finetuned'] for i in random]):.3f}")
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", default="benchmarks/results/cpu-fidelity.json")
    parser.add_argument("--config", default="cifar10_resnet")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides (data and knowledge), key=value")
    parser.add_argument("--settings", nargs="+", type=parse_setting, default=[("adam", 0, 0.0), ("adam", 2, 1e-4)])
    parser.add_argument("--networks", nargs="*", type=int, help="row numbers of the report (default: all)")
    parser.add_argument("--stitch-images", type=int, help="fit images the stitches are solved and tuned on")
    parser.add_argument("--stitch-ridge", type=float, help="relative ridge penalty of the stitch solves")
    parser.add_argument("--head-l2", type=float, help="L2 penalty of the logistic head")
    parser.add_argument("--stitches-only", action="store_true", help="freeze the head")
    return run_script(parser, run_parsed, argv)


def run_parsed(args) -> None:
    report, kb, base, val, fit, archs = load(args.report, args.config, args.set, stitch_images=args.stitch_images,
                                               stitch_ridge=args.stitch_ridge, head_l2=args.head_l2)
    chosen = args.networks if args.networks is not None else list(range(len(archs)))
    trainable = ("stitches",) if args.stitches_only else tune.TRAINABLE
    counts = {}
    for name, steps, lr in args.settings:
        setting, losses = f"{name}:{steps}:{lr:g}", []
        evaluator = Evaluator(kb, dataclasses.replace(base, stitch_steps=steps, stitch_lr=lr if steps else base.stitch_lr),
                              fit)
        counts[setting] = []
        with tuning(name, trainable, losses):
            for i in chosen:
                losses.clear()
                correct = evaluator.evaluate(archs[i], val).correct
                counts[setting].append(correct)
                print(f"{setting} network {i}: {correct} of {len(val)}"
                      + (f", tuning loss {np.array2string(losses[-1], precision=4)}" if losses else ""), flush=True)
    print("\n".join(summary([report["rows"][i] for i in chosen], counts, len(val))))


if __name__ == "__main__":
    main()
