"""PyTorch baselines for the throughput benchmark: the same networks, the same weights, the same
protocol, evaluated one network after another as a PyTorch expert would write the loop.

- The images live on the device, normalised once, channels-last (what cuDNN and oneDNN run
  fastest); batches are views of them.
- A stitch (a 1x1 convolution with bias) only where the network has a junction.
- BatchNorm in evaluation mode, or (`fold=True`, a second row) folded into the convolution.
- Numerics as PyTorch users run them (`NUMERICS`): fp32 with TF32 convolutions (PyTorch's
  default on GPUs), strict fp32 (TF32 off; what the JAX fp32 rows compute), bf16 autocast.
- `torch.compile` (`COMPILED`), two ways: `modules` compiles each module function once per shape
  (the weights are arguments, a stitch or none, the stride and the padding specialise it) and
  reuses the graphs for every network, what a search can afford; `network` compiles a whole
  network's forward on a batch as one graph (weights as arguments, specialised by the network's
  structure: one graph per network, each compiled before it is timed), PyTorch's steady state
  with no per-call overhead between modules (W1 only; a search would pay its compile per network).
  `compiles()` counts the graphs dynamo made, so a table shows what each costs.

W1 (forward only) runs fitted networks over the images; W2 (the whole protocol) fits the
stitches and BatchNorm statistics module by module on the fit images, the logistic head with
L-BFGS (as the JAX protocol), then scores with BatchNorm folded (as the JAX drivers do), and
reports the time of each phase.
"""

from __future__ import annotations

import contextlib
import functools
import time

import numpy as np
import torch
import torch.nn.functional as F

from modulenet_jax.knowledge import KnowledgeBase
from modulenet_jax.protocol import Protocol
from modulenet_jax.space import Architecture

EPS = 1e-5
# name: (autocast dtype or None, TF32 convolutions and matrix products)
NUMERICS = {"fp32-strict": (None, False), "fp32-tf32": (None, True), "bf16": (torch.bfloat16, False)}
# what `torch.compile` compiles: None (eager), each module function, or each whole network
COMPILED = (None, "modules", "network")


def _t(a, device):
    return torch.from_numpy(np.array(a, np.float32)).to(device)


def _conv(k, device):
    """HWIO -> OIHW, channels-last."""
    return _t(np.transpose(np.asarray(k), (3, 2, 0, 1)), device).contiguous(memory_format=torch.channels_last)


def _bn(p, device):
    return [_t(p[k], device) for k in ("mean", "var", "scale", "bias")]


def module_weights(kb: KnowledgeBase, module_id: str, device) -> list:
    """A module's weights (fp32): [conv, bn...] for the stem, [conv1, bn1..., conv2, bn2...] for a block."""
    p = kb.module_params(module_id)
    if kb.record(module_id).spec.kind == "stem":
        return [_conv(p["conv"]["kernel"], device), *_bn(p["bn"], device)]
    return [_conv(p["conv1"]["kernel"], device), *_bn(p["bn1"], device),
            _conv(p["conv2"]["kernel"], device), *_bn(p["bn2"], device)]


def fold(weights: list) -> list:
    """[conv, mean, var, scale, bias]* -> [conv * inv, (bias - mean * inv)]*: BatchNorm in the conv."""
    out = []
    for i in range(0, len(weights), 5):
        conv, mean, var, scale, bias = weights[i:i + 5]
        inv = scale * torch.rsqrt(var + EPS)
        out += [(conv * inv[:, None, None, None]).contiguous(memory_format=torch.channels_last), bias - mean * inv]
    return out


def _conv_bn(x, w, stride=1):
    """conv + BatchNorm (5 weights) or a folded conv with bias (2 weights)."""
    if len(w) == 2:
        return F.conv2d(x, w[0], w[1], stride=stride, padding=1)
    return F.batch_norm(F.conv2d(x, w[0], stride=stride, padding=1), *w[1:5], training=False, eps=EPS)


def _shortcut(x, stride: int, pad: int):
    if stride > 1:
        x = x[:, :, ::stride, ::stride]
    return F.pad(x, (0, 0, 0, 0, pad, pad)) if pad else x


def stem_forward(x, w):
    return F.relu(_conv_bn(x, w))


def block_forward(x, stitch, w, stride: int, pad: int):
    """A stitch (None: no junction) then a BasicBlock (BatchNorm as it is or folded)."""
    if stitch is not None:
        x = F.conv2d(x, stitch[0], stitch[1])
    n = len(w) // 2
    h = F.relu(_conv_bn(x, w[:n], stride))
    return F.relu(_conv_bn(h, w[n:]) + _shortcut(x, stride, pad))


def network_features(x, weights, stitches, plan, stem=stem_forward, block=block_forward):
    """A fitted network on one batch: the stem, its blocks (`plan`: (stride, pad) per block) and
    the pooled fp32 features; `stem`/`block` as given (eager or each compiled)."""
    x = stem(x, weights[0])
    for (stride, pad), st, w in zip(plan, stitches, weights[1:]):
        x = block(x, st, w, stride, pad)
    return x.float().mean(dim=(2, 3))


def _calibrated(h, scale, bias):
    """BN with the batch's own statistics (mean, unbiased variance, in fp32), as the JAX recalibration."""
    hf = h.float()
    mean, var = hf.mean(dim=(0, 2, 3)), hf.var(dim=(0, 2, 3), unbiased=True)
    return F.batch_norm(hf, mean, var, scale, bias, training=False, eps=EPS).to(h.dtype), [mean, var, scale, bias]


def stem_calibrate(x, w):
    y, bn = _calibrated(F.conv2d(x, w[0], padding=1), w[3], w[4])
    return F.relu(y), [w[0], *bn]


def block_calibrate(x, stitch, w, stride: int, pad: int):
    if stitch is not None:
        x = F.conv2d(x, stitch[0], stitch[1])
    h, bn1 = _calibrated(F.conv2d(x, w[0], stride=stride, padding=1), w[3], w[4])
    h, bn2 = _calibrated(F.conv2d(F.relu(h), w[5], padding=1), w[8], w[9])
    return F.relu(h + _shortcut(x, stride, pad)), [w[0], *bn1, w[5], *bn2]


def _stitch_conv(kernel, bias, device):
    """A (Cin, Cout) stitch (torch tensors) as a 1x1 conv weight (Cout, Cin, 1, 1) and bias, fp32."""
    k = kernel.to(device=device, dtype=torch.float32)
    return k.T[:, :, None, None].contiguous(memory_format=torch.channels_last), bias.to(device, torch.float32)


def count_correct(feats, head, labels) -> int:
    """Correct predictions of a linear head on pooled features, in fp32 (outside any autocast)."""
    with torch.autocast(feats.device.type, enabled=False):
        return int(((feats.float() @ head[0] + head[1]).argmax(-1) == labels).sum().item())


class Resident:
    """A split on the device: normalised fp32 images (channels-last) and labels, in batches (views)."""

    def __init__(self, images_u8, labels, mean, std, device, batch_size: int):
        x = torch.from_numpy(np.ascontiguousarray(images_u8)).to(device).permute(0, 3, 1, 2).float() / 255.0
        self.images = ((x - mean[None, :, None, None]) / std[None, :, None, None]).contiguous(
            memory_format=torch.channels_last)
        self.labels = torch.from_numpy(np.asarray(labels)).to(device).long()
        self.batch_size = batch_size

    def __len__(self):
        return len(self.labels)

    def batches(self):
        for i in range(0, len(self), self.batch_size):
            yield self.images[i:i + self.batch_size], self.labels[i:i + self.batch_size]


class TorchRunner:
    """Evaluates networks of a knowledge base with PyTorch on one device, in one of `NUMERICS`,
    eager or compiled (`compiled`, one of `COMPILED`), BatchNorm as it is or folded."""

    def __init__(self, kb: KnowledgeBase, device: str, numerics: str, compiled: str | None = None,
                 fold_bn: bool = False):
        if compiled not in COMPILED:
            raise ValueError(f"compiled must be one of {COMPILED}, not {compiled!r}")
        self.kb, self.device, self.numerics, self.compiled, self.fold = kb, device, numerics, compiled, fold_bn
        self.autocast, self.tf32 = NUMERICS[numerics]
        self._weights, self._folded, self._copies = {}, {}, {}
        model = kb.source_model(next(iter(kb.sources)))
        self.mean = torch.tensor(model.mean, device=device)
        self.std = torch.tensor(model.std, device=device)
        if compiled:
            # one graph per (module shape, stitch or not, numerics, batch size), or per network: more than
            # dynamo's default limit of 8 per function
            for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                         "accumulated_cache_size_limit"):
                if hasattr(torch._dynamo.config, name):
                    setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 256))

        def per_module(fn):
            return torch.compile(fn, dynamic=False) if compiled == "modules" else fn

        self.stem_fn, self.block_fn = per_module(stem_forward), per_module(block_forward)
        self.stem_calibrate, self.block_calibrate = per_module(stem_calibrate), per_module(block_calibrate)
        if compiled == "network":
            self.network_fn = torch.compile(network_features, dynamic=False)
        else:
            self.network_fn = functools.partial(network_features, stem=self.stem_fn, block=self.block_fn)

    @staticmethod
    def compiles() -> int:
        """Graphs dynamo has compiled in this process so far."""
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])

    @contextlib.contextmanager
    def context(self, grad: bool = False):
        """The runner's numerics (autocast, TF32 flags) around a piece of work; no autograd
        unless `grad`. The flags are set each time, since several runners share the process."""
        saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = self.tf32
        device_type = "cuda" if str(self.device).startswith("cuda") else "cpu"
        try:
            with contextlib.ExitStack() as stack:
                stack.enter_context(torch.enable_grad() if grad else torch.no_grad())
                if self.autocast is not None:
                    stack.enter_context(torch.autocast(device_type, dtype=self.autocast))
                yield
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved

    def resident(self, images, labels, batch_size: int) -> Resident:
        return Resident(images, labels, self.mean, self.std, self.device, batch_size)

    def weights(self, module_id):
        if module_id not in self._weights:
            self._weights[module_id] = module_weights(self.kb, module_id, self.device)
        return self._weights[module_id]

    def _plan(self, arch):
        recs = [self.kb.record(m) for m in arch.modules[1:]]
        return [(r.spec.stride, dict(r.spec.static).get("pad_channels", 0)) for r in recs]

    def identity_stitches(self, arch):
        """Per block, an identity stitch at a junction, None elsewhere (W1's fitted-network stand-in)."""
        out = []
        for m, junction in zip(arch.modules[1:], arch.junctions(self.kb)[1:]):
            c = self.kb.record(m).spec.in_channels
            out.append(_stitch_conv(torch.eye(c), torch.zeros(c), self.device) if junction else None)
        return out

    def head(self, params):
        return _t(params["kernel"], self.device), _t(params["bias"], self.device)

    def inference_weights(self, module_id):
        """A module's weights as W1 runs them: as they are, or BatchNorm folded (folded once per module)."""
        if not self.fold:
            return self.weights(module_id)
        if module_id not in self._folded:
            self._folded[module_id] = fold(self.weights(module_id))
        return self._folded[module_id]

    # -- W1 -----------------------------------------------------------------------------------

    def network_weights(self, arch):
        """Per module position the weights W1 runs. In `compile-network` mode a module used again
        gets a copy of its own at each later position (made once, kept): a graph compiled for a
        whole network guards that its inputs are distinct tensors, and a network repeating a module
        failed that guard (torch 2.14's dynamo, explaining the failure, then raised a TypeError
        evaluating the old graph's stitch inputs where this network has no stitch)."""
        out = []
        for k, m in enumerate(arch.modules):
            use = arch.modules[:k].count(m)
            if use and self.compiled == "network":
                if (m, use) not in self._copies:
                    self._copies[m, use] = [t.clone() for t in self.inference_weights(m)]
                out.append(self._copies[m, use])
            else:
                out.append(self.inference_weights(m))
        return out

    def features(self, arch, weights, stitches, data: Resident):
        """Pooled fp32 features of every image of `data` (weights used as given)."""
        plan = self._plan(arch)
        return torch.cat([self.network_fn(x, weights, stitches, plan) for x, _ in data.batches()])

    def forward_correct(self, arch, stitches, head, data: Resident) -> int:
        """Correct predictions of one fitted network over a resident split (one device sync)."""
        with self.context():
            weights = self.network_weights(arch)
            return count_correct(self.features(arch, weights, stitches, data), head, data.labels)

    # -- W2 -----------------------------------------------------------------------------------

    def _fit_stitch(self, a, b, ridge):
        a = a.permute(0, 2, 3, 1).reshape(-1, a.shape[1]).float()
        b = b.permute(0, 2, 3, 1).reshape(-1, b.shape[1]).float()
        ma, mb = a.mean(0), b.mean(0)
        ac, bc = a - ma, b - mb
        gram, cross = ac.T @ ac, ac.T @ bc
        lam = ridge * torch.trace(gram) / a.shape[1] + 1e-12
        k = torch.linalg.solve(gram + lam * torch.eye(a.shape[1], device=a.device), cross)
        return _stitch_conv(k, mb - ma @ k, self.device)

    def _logistic_head(self, feats, labels, num_classes, l2, steps):
        mu, sd = feats.mean(0), feats.std(0, unbiased=False) + 1e-6
        z = (feats - mu) / sd
        w = torch.zeros(feats.shape[1], num_classes, device=feats.device, requires_grad=True)
        b = torch.zeros(num_classes, device=feats.device, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe", tolerance_grad=0,
                                tolerance_change=0)

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(z @ w + b, labels) + 0.5 * l2 * (w * w).sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            k = w / sd[:, None]
            return k, b - mu @ k

    def fit_head(self, feats, labels, num_classes: int, protocol: Protocol):
        """The logistic head (kernel, bias on the device), fitted on the CPU in fp32: a problem of
        a few thousand rows of pooled features, whose L-BFGS steps, each line search reading
        values back to the host, took 0.57-0.93 s per network on an H200's GPU (83-88% of
        PyTorch's W2 time there) and 0.30-0.37 s on a 2-core CPU."""
        with torch.enable_grad(), torch.autocast("cpu", enabled=False):
            k, b = self._logistic_head(feats.float().cpu(), labels.cpu(), num_classes, protocol.head_l2,
                                       protocol.head_steps)
        return k.to(self.device), b.to(self.device)

    def _sync(self):
        if str(self.device).startswith("cuda"):
            torch.cuda.synchronize()

    def protocol_correct(self, arch: Architecture, source_inputs, protocol: Protocol, fit: Resident,
                         val: Resident, num_classes: int, phases: dict | None = None) -> int:
        """The whole protocol for one network: stitches on the stitch images (and, where BN is
        recalibrated, every BN layer's statistics from all fit images, in forward order: every
        module with `recalibrate`, from the first junction on with `from_junction`), the
        head on the fit images' features, correct predictions on `val` with BatchNorm folded.
        `phases` (a dict) accumulates the seconds of each phase: `fit pass` (stitches and BN
        statistics), `head` (its features, if separate, and L-BFGS), `score`."""
        junctions = arch.junctions(self.kb)
        first = next((i for i, j in enumerate(junctions) if j), len(junctions))
        calibrated = [protocol.bn == "recalibrate" or (protocol.bn == "from_junction" and i >= first)
                      for i in range(len(arch.modules))]
        every_fit_image = any(calibrated)  # BN statistics need the whole fit split carried through
        plan = self._plan(arch)
        clock = PhaseClock(self._sync, phases)
        with self.context():
            x = fit.images if every_fit_image else fit.images[:protocol.stitch_images]
            stem_w = self.weights(arch.modules[0])
            if calibrated[0]:
                x, stem_w = self.stem_calibrate(x, stem_w)
            else:
                x = self.stem_fn(x, stem_w)
            weights, stitches = [stem_w], []
            for i, ((stride, pad), m, j) in enumerate(zip(plan, arch.modules[1:], junctions[1:]), 1):
                st = None
                if j and protocol.stitch:
                    with torch.autocast(x.device.type, enabled=False):
                        st = self._fit_stitch(x[:protocol.stitch_images], source_inputs(m), protocol.stitch_ridge)
                stitches.append(st)
                w = self.weights(m)
                if calibrated[i]:
                    x, w = self.block_calibrate(x, st, w, stride, pad)
                else:
                    x = self.block_fn(x, st, w, stride, pad)
                weights.append(w)
            clock("fit pass")
            inference = [fold(w) for w in weights]
            feats = x.float().mean(dim=(2, 3)) if every_fit_image else self.features(arch, inference, stitches, fit)
        k, b = self.fit_head(feats, fit.labels, num_classes, protocol)
        clock("head")
        with self.context():
            correct = count_correct(self.features(arch, inference, stitches, val), (k, b), val.labels)
        clock("score")
        return correct


class PhaseClock:
    """Adds the seconds since the last call (device synchronised) to `phases[name]`."""

    def __init__(self, sync, phases: dict | None):
        self.sync, self.phases = sync, phases
        self.t = time.perf_counter()

    def __call__(self, name: str):
        if self.phases is None:
            return
        self.sync()
        t = time.perf_counter()
        self.phases[name] = self.phases.get(name, 0.0) + t - self.t
        self.t = t


def source_inputs_torch(kb: KnowledgeBase, runner: TorchRunner, fit: Resident, n: int):
    """{module id: the input it had in its own source} on the first `n` fit images (fp32, the
    runner's numerics), as a lookup function."""
    cache = {}
    with runner.context():
        for source in kb.sources:
            x = fit.images[:n]
            for r in kb.modules_of(source):
                if r.spec.kind == "head":
                    break
                cache[r.id] = x.float()
                w = runner.weights(r.id)
                x = stem_forward(x, w) if r.spec.kind == "stem" else block_forward(
                    x, None, w, r.spec.stride, dict(r.spec.static).get("pad_channels", 0))
    return cache.__getitem__


def timed(fn, sync_device: str):
    """Wall time of fn() with the device synchronised before and after."""
    if sync_device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if sync_device.startswith("cuda"):
        torch.cuda.synchronize()
    return out, time.perf_counter() - t
