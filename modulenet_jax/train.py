"""End-to-end training of a `network.Network`: the one fine-tuning of the project.

Every weight is trained (convolutions, BatchNorm affine, stitches, head) on the cross-entropy,
with BatchNorm in training mode (batch statistics; running statistics updated by momentum,
as PyTorch does) and evaluated in evaluation mode. The optimizer (`optimizer`) is SGD with
Nesterov momentum and PyTorch-style (coupled) weight decay, or AdamW (decoupled), on a cosine
schedule with an optional linear warm-up and optional clipping of the gradients' global norm.
Augmentation (`augment`: CIFAR's random crop with 4-pixel zero padding and a horizontal flip)
runs on the device inside the jitted `train_step`.

Every random choice comes from `Settings.seed`: the image order of epoch e from
`numpy.random.default_rng([seed, e])`, the augmentation of step s from
`jax.random.fold_in(key(seed), s)`. So a run restored from the checkpoint after epoch k (`fit`
with a `checkpoints` folder) goes on exactly as the uninterrupted run did.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from modulenet_jax.checkpoints import restore_checked
from modulenet_jax.data import Split
from modulenet_jax.errors import UserError
from modulenet_jax.network import evaluate
from modulenet_jax.progress import NO_PROGRESS, Progress

OPTIMIZERS = ("sgd", "adamw")
CROP_PADDING = 4


@dataclasses.dataclass(frozen=True)
class Settings:
    """How a network is trained (configs are data: every field is a setting).

    - `epochs`; `images`: train images per epoch, drawn without replacement in a new order
      every epoch (None: the whole train split); `batch_size` (a last partial batch is dropped);
    - `optimizer`: `sgd` (Nesterov momentum `momentum`, weight decay added to the gradient as
      PyTorch's SGD does) or `adamw` (decoupled weight decay); `learning_rate`, `weight_decay`;
    - `warmup`: the fraction of all steps over which the learning rate rises linearly from 0,
      before the cosine decay to 0;
    - `clip_norm`: clip the gradients' global norm to this (None: no clipping);
    - `augment`: random crop (4-pixel zero padding) and horizontal flip, on the device;
    - `bn_momentum`: momentum of the BatchNorm running statistics;
    - `seed`: every random choice (image order, augmentation).
    """

    epochs: int = 1
    images: int | None = None
    batch_size: int = 128
    learning_rate: float = 0.01
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup: float = 0.0
    clip_norm: float | None = None
    augment: bool = True
    bn_momentum: float = 0.1
    seed: int = 0

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.epochs < 0 or self.batch_size < 1 or (self.images is not None and self.images < 1):
            raise UserError(f"epochs must be >= 0, batch size and images per epoch positive; got {self.epochs}, "
                            f"{self.batch_size}, {self.images}")
        if not self.learning_rate > 0 or self.weight_decay < 0 or not 0 <= self.warmup < 1:
            raise UserError(f"learning rate must be > 0, weight decay >= 0 and warm-up in [0, 1); got "
                            f"{self.learning_rate}, {self.weight_decay}, {self.warmup}")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise UserError(f"clip norm must be None or > 0, got {self.clip_norm}")

    def steps_per_epoch(self, train_images: int) -> int:
        """Optimizer steps in one epoch over a train split of `train_images` images."""
        n = train_images if self.images is None else min(self.images, train_images)
        steps = n // self.batch_size
        if steps < 1:
            raise UserError(f"an epoch of {n} train images holds no batch of {self.batch_size}; "
                            f"lower the batch size or raise the images per epoch")
        return steps

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def optimizer(settings: Settings, total_steps: int) -> optax.GradientTransformation:
    """The settings' optimizer on a warm-up + cosine schedule (see `Settings`)."""
    warmup = int(settings.warmup * total_steps)
    schedule = optax.warmup_cosine_decay_schedule(0.0, settings.learning_rate, warmup, max(total_steps, 1))
    if settings.optimizer == "sgd":
        tx = optax.chain(optax.add_decayed_weights(settings.weight_decay),
                         optax.sgd(schedule, momentum=settings.momentum, nesterov=True))
    else:
        tx = optax.adamw(schedule, weight_decay=settings.weight_decay)
    if settings.clip_norm is not None:
        tx = optax.chain(optax.clip_by_global_norm(settings.clip_norm), tx)
    return tx


def augment(key, images, padding: int = CROP_PADDING):
    """CIFAR augmentation of uint8 NHWC images: pad each side with `padding` zero pixels, crop
    back to the original size at a random offset, flip horizontally with probability 1/2."""
    n, h, w, c = images.shape
    k_crop, k_flip = jax.random.split(key)
    offsets = jax.random.randint(k_crop, (n, 2), 0, 2 * padding + 1)
    flips = jax.random.bernoulli(k_flip, 0.5, (n,))
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    crops = jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, c)))(padded, offsets)
    return jnp.where(flips[:, None, None, None], crops[:, :, ::-1], crops)


class TrainState(NamedTuple):
    """What training carries from step to step (and what a checkpoint holds)."""

    params: Any
    batch_stats: Any
    opt_state: Any


def init_state(settings: Settings, total_steps: int, variables: dict) -> TrainState:
    params = variables["params"]
    return TrainState(params, variables.get("batch_stats", {}), optimizer(settings, total_steps).init(params))


def variables_of(state: TrainState) -> dict:
    """The model's variables (as `network.from_fitted` and `export.load` give them)."""
    return {"params": state.params, "batch_stats": state.batch_stats} if state.batch_stats else {"params": state.params}


@functools.partial(jax.jit, static_argnames=("model", "settings", "total_steps"))
def train_step(model, settings: Settings, total_steps: int, state: TrainState, images, labels, key):
    """One optimizer step on a uint8 batch (augmented here when the settings say so):
    `(new state, {"loss", "correct"})` — the loss and correct predictions on the batch, before
    the step."""
    if settings.augment:
        images = augment(key, images)

    def loss_fn(params):
        variables = variables_of(state._replace(params=params))
        logits, updated = model.apply(variables, images, train=True, mutable=["batch_stats"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, (logits, updated.get("batch_stats", {}))

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer(settings, total_steps).update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    correct = jnp.sum(jnp.argmax(logits, axis=-1) == labels)
    return TrainState(params, batch_stats, opt_state), {"loss": loss, "correct": correct}


def epoch_order(settings: Settings, epoch: int, train_images: int) -> np.ndarray:
    """The train images of one epoch, in order: `steps_per_epoch` full batches of them."""
    steps = settings.steps_per_epoch(train_images)
    return np.random.default_rng([settings.seed, epoch]).permutation(train_images)[:steps * settings.batch_size]


def _checkpoints(folder) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False)
    return ocp.CheckpointManager(Path(folder).absolute(), options=options)


def _restore(manager: ocp.CheckpointManager, step: int, like: TrainState) -> dict:
    """The state saved after epoch `step`; a damaged one is a `UserError` that says how to go on."""
    folder = Path(manager.directory) / str(step)
    args = ocp.args.StandardRestore(like._asdict())
    return restore_checked(folder / "default", lambda: manager.restore(step, args=args),
                           f"delete {folder} to resume from the epoch saved before it (or from the start)")


def fit(model, variables: dict, train: Split, settings: Settings, evaluation: Split | None = None,
        eval_batch_size: int = 500, checkpoints=None, metrics_path=None, progress: Progress = NO_PROGRESS,
        log: Callable[[str], None] = print) -> tuple[dict, list[dict]]:
    """Trains `model` from `variables` on `train`; returns `(variables, metrics per epoch)`.

    After every epoch: the model is evaluated on `evaluation` (if given), the epoch's metrics
    are appended to `metrics_path` (JSON lines) and the state is saved in the orbax folder
    `checkpoints`. Given a `checkpoints` folder that already holds epochs, training resumes
    after the last one (the metrics file is cut back to it) and ends exactly as an
    uninterrupted run. `progress` reports the steps."""
    steps = settings.steps_per_epoch(len(train))
    total = steps * settings.epochs
    state = init_state(settings, total, variables)
    metrics = _read_metrics(metrics_path)
    manager = _checkpoints(checkpoints) if checkpoints is not None else None
    start = 0
    if manager is not None and manager.latest_step() is not None:
        start = manager.latest_step()
        restored = _restore(manager, start, state)
        state = TrainState(**restored)
        log(f"resuming after epoch {start} of {settings.epochs}")
    # committed to the device as a restored state is, so a fit resumed in this process reuses the
    # compiled step (an uncommitted state's program is another one)
    state = jax.device_put(state, jax.devices()[0])
    metrics = [m for m in metrics if m["epoch"] <= start]
    if metrics_path is not None:
        Path(metrics_path).write_text("".join(json.dumps(m) + "\n" for m in metrics))
    key = jax.random.key(settings.seed)
    with progress.task("fine-tuning", total, "steps", done=start * steps) as advance:
        for epoch in range(start, settings.epochs):
            t0 = time.time()
            order = epoch_order(settings, epoch, len(train))
            loss_sum, correct = jnp.zeros(()), jnp.zeros((), jnp.int32)
            for b in range(steps):
                idx = order[b * settings.batch_size:(b + 1) * settings.batch_size]
                step_key = jax.random.fold_in(key, epoch * steps + b)
                state, m = train_step(model, settings, total, state, jnp.asarray(train.images[idx]),
                                      jnp.asarray(train.labels[idx]), step_key)
                loss_sum, correct = loss_sum + m["loss"], correct + m["correct"]
                advance()
            row = {"epoch": epoch + 1, "train_loss": float(loss_sum) / steps,
                   "train_accuracy": int(correct) / (steps * settings.batch_size)}
            if evaluation is not None:
                c, t = evaluate(model, variables_of(state), evaluation, eval_batch_size)
                row.update({"eval_split": evaluation.description, "eval_correct": c, "eval_total": t,
                            "eval_accuracy": c / t})
            row["seconds"] = round(time.time() - t0, 1)
            if manager is not None:
                manager.save(epoch + 1, args=ocp.args.StandardSave(state._asdict()))
            metrics.append(row)
            if metrics_path is not None:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(row) + "\n")
            log(f"epoch {epoch + 1}/{settings.epochs}: train loss {row['train_loss']:.4f}, train accuracy "
                f"{row['train_accuracy']:.4f}" + (f", eval {row['eval_correct']}/{row['eval_total']} "
                                                  f"({row['eval_accuracy']:.4f})" if evaluation is not None else "")
                + f" ({row['seconds']} s)")
    if manager is not None:
        manager.close()
    return variables_of(state), metrics


def _read_metrics(path) -> list[dict]:
    """The epochs' metrics written so far (a line cut short by a kill is dropped)."""
    if path is None or not Path(path).is_file():
        return []
    lines = Path(path).read_text().splitlines(keepends=True)
    return [json.loads(line) for line in lines if line.endswith("\n")]

