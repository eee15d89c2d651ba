"""PyTorch baselines for the throughput benchmark: the same networks, the same weights, the same
protocol, evaluated one network after another the way a hand-written PyTorch loop would.

W1 (forward only) runs each network as one function of its weights; with `torch.compile`
that function is compiled once and reused for every network (all W1 networks share one
shape: nine blocks per stage, a stitch before every block, identity where there is no
junction — exactly the work the JAX program does). W2 (the whole protocol) fits stitches,
recalibrates BatchNorm when the protocol does, fits the head (L-BFGS, as the JAX protocol) and
scores, module by module; with `torch.compile`
each module kind is compiled once.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from modulenet_jax.protocol import Protocol
from modulenet_jax.knowledge import KnowledgeBase
from modulenet_jax.space import Architecture

EPS = 1e-5


def _t(a, device, dtype):
    return torch.from_numpy(np.array(a)).to(device=device, dtype=dtype)


def _conv(k, device, dtype):
    """HWIO -> OIHW."""
    return _t(np.transpose(np.asarray(k), (3, 2, 0, 1)), device, dtype).contiguous(memory_format=torch.channels_last)


def _bn(p, device, dtype):
    return [_t(p[k], device, dtype) for k in ("mean", "var", "scale", "bias")]


def module_weights(kb: KnowledgeBase, module_id: str, device, dtype) -> list:
    """A module's weights as torch tensors: [conv, bn...] for the stem, [conv1, bn1, conv2, bn2] for a block."""
    p = kb.module_params(module_id)
    if kb.record(module_id).spec.kind == "stem":
        return [_conv(p["conv"]["kernel"], device, dtype), *_bn(p["bn"], device, dtype)]
    return [_conv(p["conv1"]["kernel"], device, dtype), *_bn(p["bn1"], device, dtype),
            _conv(p["conv2"]["kernel"], device, dtype), *_bn(p["bn2"], device, dtype)]


def _bn_apply(x, mean, var, w, b):
    return F.batch_norm(x, mean, var, w, b, training=False, eps=EPS)


def stem_forward(x, w):
    return F.relu(_bn_apply(F.conv2d(x, w[0], padding=1), *w[1:5]))


def block_forward(x, w, stride: int, pad: int):
    h = F.relu(_bn_apply(F.conv2d(x, w[0], stride=stride, padding=1), *w[1:5]))
    h = _bn_apply(F.conv2d(h, w[5], padding=1), *w[6:10])
    s = x
    if stride > 1:
        s = s[:, :, ::stride, ::stride]
    if pad:
        s = F.pad(s, (0, 0, 0, 0, pad, pad))
    return F.relu(h + s)


def stitch_forward(x, kernel, bias):
    return torch.einsum("nchw,cd->ndhw", x, kernel) + bias[None, :, None, None]


def network_logits(x, weights, plan, head):
    """`plan`: per block (stride, pad); `weights`: [stem, (stitch_k, stitch_b, block)...]."""
    x = stem_forward(x, weights[0])
    for (stride, pad), (sk, sb, w) in zip(plan, weights[1:]):
        x = block_forward(stitch_forward(x, sk, sb), w, stride, pad)
    return x.mean(dim=(2, 3)) @ head[0] + head[1]


def _preprocess(images_u8, mean, std, device, dtype):
    x = torch.from_numpy(images_u8).to(device).permute(0, 3, 1, 2).float() / 255.0
    x = (x - mean[None, :, None, None]) / std[None, :, None, None]
    return x.to(dtype).contiguous(memory_format=torch.channels_last)


class TorchRunner:
    """Evaluates networks of a knowledge base with PyTorch on one device."""

    def __init__(self, kb: KnowledgeBase, device: str, dtype: torch.dtype, compile_: bool):
        self.kb, self.device, self.dtype, self.compile = kb, device, dtype, compile_
        self._weights = {}
        model = kb.source_model(next(iter(kb.sources)))
        self.mean = torch.tensor(model.mean, device=device)
        self.std = torch.tensor(model.std, device=device)
        if compile_:
            # one program per (module shape, batch size): more than dynamo's default limit of 8
            for name in ("recompile_limit", "cache_size_limit"):
                if hasattr(torch._dynamo.config, name):
                    setattr(torch._dynamo.config, name, 64)
        self.logits_fn = torch.compile(network_logits, dynamic=False) if compile_ else network_logits
        self.block_fn = torch.compile(block_forward, dynamic=False) if compile_ else block_forward
        self.stem_fn = torch.compile(stem_forward, dynamic=False) if compile_ else stem_forward

    def weights(self, module_id):
        if module_id not in self._weights:
            self._weights[module_id] = module_weights(self.kb, module_id, self.device, self.dtype)
        return self._weights[module_id]

    def _plan(self, arch):
        recs = [self.kb.record(m) for m in arch.modules[1:]]
        return [(r.spec.stride, dict(r.spec.static).get("pad_channels", 0)) for r in recs]

    def identity_stitches(self, arch):
        """An identity 1x1 stitch before every block (W1's uniform shape)."""
        out = []
        for m in arch.modules[1:]:
            c = self.kb.record(m).spec.in_channels
            out.append((torch.eye(c, device=self.device, dtype=self.dtype),
                        torch.zeros(c, device=self.device, dtype=self.dtype)))
        return out

    # -- W1 -----------------------------------------------------------------------------------

    def forward_correct(self, arch, stitches, head, images, labels, batch_size):
        """Correct predictions of one network over a split (one device sync at the end)."""
        weights = [self.weights(arch.modules[0])] + [(k, b, self.weights(m)) for (k, b), m in
                                                     zip(stitches, arch.modules[1:])]
        plan = self._plan(arch)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                x = _preprocess(images[i:i + batch_size], self.mean, self.std, self.device, self.dtype)
                y = torch.from_numpy(labels[i:i + batch_size]).to(self.device)
                logits = self.logits_fn(x, weights, plan, head)
                correct += (logits.argmax(-1) == y).sum()
        return int(correct.item())

    # -- W2 -----------------------------------------------------------------------------------

    def _fit_stitch(self, a, b, ridge):
        a = a.permute(0, 2, 3, 1).reshape(-1, a.shape[1]).float()
        b = b.permute(0, 2, 3, 1).reshape(-1, b.shape[1]).float()
        ma, mb = a.mean(0), b.mean(0)
        ac, bc = a - ma, b - mb
        gram, cross = ac.T @ ac, ac.T @ bc
        lam = ridge * torch.trace(gram) / a.shape[1] + 1e-12
        k = torch.linalg.solve(gram + lam * torch.eye(a.shape[1], device=a.device), cross)
        return k.to(self.dtype), (mb - ma @ k).to(self.dtype)

    def _features(self, arch, weights, stitches, images, batch_size):
        feats = []
        plan = self._plan(arch)
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                x = _preprocess(images[i:i + batch_size], self.mean, self.std, self.device, self.dtype)
                x = self.stem_fn(x, weights[0])
                for (stride, pad), st, w in zip(plan, stitches, weights[1:]):
                    if st is not None:
                        x = stitch_forward(x, *st)
                    x = self.block_fn(x, w, stride, pad)
                feats.append(x.float().mean(dim=(2, 3)))
        return torch.cat(feats)

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

    def protocol_correct(self, arch: Architecture, source_inputs, protocol: Protocol, fit_images, fit_labels,
                         images, labels, num_classes):
        """The whole protocol for one network: stitches on the stitch images (and, with BN
        recalibration, every BN layer's statistics from all fit images, in forward order), the
        head on the fit images' features, correct predictions on the split."""
        recalibrate = protocol.bn == "recalibrate"
        junctions = arch.junctions(self.kb)
        plan = self._plan(arch)
        stitches = []
        with torch.no_grad():
            first = fit_images if recalibrate else fit_images[:protocol.stitch_images]
            x = _preprocess(first, self.mean, self.std, self.device, self.dtype)
            stem_w = self.weights(arch.modules[0])
            if recalibrate:
                x, stem_w = stem_calibrate(x, stem_w)
            else:
                x = self.stem_fn(x, stem_w)
            weights = [stem_w]
            for (stride, pad), m, j in zip(plan, arch.modules[1:], junctions[1:]):
                st = None
                if j and protocol.stitch:
                    st = self._fit_stitch(x[:protocol.stitch_images], source_inputs(m), protocol.stitch_ridge)
                    x = stitch_forward(x, *st)
                stitches.append(st)
                if recalibrate:
                    x, w = block_calibrate(x, self.weights(m), stride, pad)
                else:
                    w = self.weights(m)
                    x = self.block_fn(x, w, stride, pad)
                weights.append(w)
        if recalibrate:
            feats = x.float().mean(dim=(2, 3))
        else:
            feats = self._features(arch, weights, stitches, fit_images, protocol.batch_size)
        y_fit = torch.from_numpy(np.asarray(fit_labels)).to(self.device).long()
        with torch.enable_grad():
            k, b = self._logistic_head(feats, y_fit, num_classes, protocol.head_l2, protocol.head_steps)
        val = self._features(arch, weights, stitches, images, protocol.batch_size)
        y = torch.from_numpy(np.asarray(labels)).to(self.device)
        return int(((val @ k + b).argmax(-1) == y).sum().item())


def _calibrated(h, scale, bias):
    """BN with the batch's own statistics (mean, unbiased variance), as the JAX recalibration."""
    hf = h.float()
    mean = hf.mean(dim=(0, 2, 3))
    var = hf.var(dim=(0, 2, 3), unbiased=True)
    mean, var = mean.to(h.dtype), var.to(h.dtype)
    return _bn_apply(h, mean, var, scale, bias), [mean, var, scale, bias]


def stem_calibrate(x, w):
    y, bn = _calibrated(F.conv2d(x, w[0], padding=1), w[3], w[4])
    return F.relu(y), [w[0], *bn]


def block_calibrate(x, w, stride: int, pad: int):
    h, bn1 = _calibrated(F.conv2d(x, w[0], stride=stride, padding=1), w[3], w[4])
    h, bn2 = _calibrated(F.conv2d(F.relu(h), w[5], padding=1), w[8], w[9])
    s = x
    if stride > 1:
        s = s[:, :, ::stride, ::stride]
    if pad:
        s = F.pad(s, (0, 0, 0, 0, pad, pad))
    return F.relu(h + s), [w[0], *bn1, w[5], *bn2]


def source_inputs_torch(kb: KnowledgeBase, runner: TorchRunner, fit_images, n: int):
    """{module id: the input it had in its own source} on the stitch images, as torch tensors."""
    cache = {}
    with torch.no_grad():
        for source in kb.sources:
            recs = [r for r in kb.modules_of(source) if r.spec.kind != "head"]
            x = _preprocess(fit_images[:n], runner.mean, runner.std, runner.device, runner.dtype)
            for r in recs:
                cache[r.id] = x
                if r.spec.kind == "stem":
                    x = stem_forward(x, runner.weights(r.id))
                else:
                    x = block_forward(x, runner.weights(r.id), r.spec.stride, dict(r.spec.static).get("pad_channels", 0))
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


