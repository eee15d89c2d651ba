"""Each 3x3 convolution shape of a CIFAR ResNet as XLA runs it and as PyTorch runs it (oneDNN on a
CPU, cuDNN on a GPU), timed alternately in one process on the same input, and the ceiling those
kernels set on W1: the genotype-images/s of a ResNet-56-shaped network whose convolutions were
all it ran (no BatchNorm, ReLU, residual add, stitch or head; each shape as many times as the
network has it).

    python -m modulenet_jax.benchmarks.conv_kernels --out benchmarks/results --name cpu-2core-amd-epyc-conv
    python -m benchmarks.conv_kernels --population 64 --out "$OUT" --name conv   # a GPU, every numerics

For P genotypes of `--batch` images each, every implementation computes the same P
convolutions (`--population`; 1 on a CPU by default, where the grouped forms are the dense one):

- `xla-dense`: each genotype's `layers.conv2d` on its own, P plain convolutions in one program
  (the fused program's groups of one);
- `xla-vmap`: `jax.vmap` over the genotypes, as the fused program's vmapped chunk runs them (XLA
  makes it one grouped convolution between transposes);
- `xla-grouped`: the grouped layout, `[batch, h, w, P·C]`, one convolution of P groups
  (`grouped.to_grouped`, `grouped.grouped_params`);
- `xla-packed2`, `xla-packed4`: the grouped layout with 2 or 4 neighbouring genotypes per
  convolution group, their kernels block-diagonal in it (`layers.packing`): as many times
  the multiplications, in groups as many times as wide (where P is a multiple; TFLOP/s count the
  genotypes' own multiplications);
- `xla-shared`: the best case of gathering a chunk by module, every genotype at this slot using
  one module: one dense convolution over P·batch images;
- `torch-dense`, `torch-grouped`: `F.conv2d` per genotype and with `groups=P`, channels-last,
  `cudnn.benchmark` on, on a GPU replayed as one CUDA graph (no Python per call).

Numerics as `throughput.py` names them: `bf16` (bf16 inputs, fp32 accumulation; PyTorch's bf16
tensors, what autocast gives a convolution), `fp32-tf32` (a GPU only) and `fp32-strict`. Each
row's `max_diff` is its largest difference from `xla-dense` (the first and last genotype's first
images) relative to that output's largest magnitude (none for `xla-shared`, which runs one genotype's kernel for all). On a device whose HBM bandwidth `throughput.PEAK_BANDWIDTH` knows, the report also
gives the network's roofline: every convolution at the card's dense peak or reading its input and
writing its output once from HBM, whichever is slower.

Apply `cpu_runtime.configure()` first, as the `modulenet` command does (this script does).
"""

from __future__ import annotations

import argparse
import functools
import time

from modulenet_jax import cpu_runtime

cpu_runtime.configure()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from .throughput import device_name, peak_bandwidth, peak_flops, write_report  # noqa: E402
from modulenet_jax import grouped  # noqa: E402
from modulenet_jax.errors import UserError, run_script  # noqa: E402
from modulenet_jax.zoo import layers  # noqa: E402

# (input channels, output channels, input resolution, stride): every 3x3 conv shape of a CIFAR ResNet
SHAPES = ((3, 16, 32, 1), (16, 16, 32, 1), (16, 32, 32, 2), (32, 32, 16, 1), (32, 64, 16, 2), (64, 64, 8, 1))
JAX_DTYPES = {"bf16": jnp.bfloat16, "fp32-tf32": jnp.float32, "fp32-strict": jnp.float32}
LAYER_NUMERICS = {"bf16": "bfloat16", "fp32-tf32": "tensorfloat32", "fp32-strict": "float32"}
CHECKED_IMAGES = 16  # outputs compared: these first images of `checked_genotypes`, not gigabytes of them
PACKS = (2, 4)  # genotypes per convolution group of the `xla-packedN` rows
IMPLS = ("xla-dense", "xla-vmap", "xla-grouped", *(f"xla-packed{n}" for n in PACKS), "xla-shared", "torch-dense",
         "torch-grouped")


def checked_genotypes(P: int) -> list[int]:
    """The genotypes whose outputs are compared: the first and the last (a grouping in the wrong
    order moves both)."""
    return sorted({0, P - 1})


def network_counts(blocks: int = 9) -> dict:
    """How many times a CIFAR ResNet of `blocks` blocks per stage (6n+2 layers; W1's networks have
    9) runs each shape of `SHAPES`: the stem, two per block, a stage's first block strided."""
    return dict(zip(SHAPES, (1, 2 * blocks, 1, 2 * blocks - 1, 1, 2 * blocks - 1)))


def flops(shape, images: int) -> int:
    cin, cout, res, stride = shape
    return 2 * images * (res // stride) ** 2 * 9 * cin * cout


def hbm_bytes(shape, images: int, itemsize: int) -> int:
    """A convolution reading its input and writing its output once (weights aside)."""
    cin, cout, res, stride = shape
    return images * (res * res * cin + (res // stride) ** 2 * cout) * itemsize


def ceiling(rows: list[dict], counts: dict) -> list[dict]:
    """Per (impl, numerics, population) measured on every shape the network runs: the network's
    convolution seconds per image (each shape's time per genotype-image times its count) and the
    genotype-images/s that leaves."""
    groups = {}
    for r in rows:
        groups.setdefault((r["impl"], r["numerics"], r["population"]), {})[tuple(r["shape"])] = r
    out = []
    for (impl, numerics, P), by_shape in groups.items():
        if set(counts) - set(by_shape):
            continue
        per_image = sum(n * by_shape[s]["ms"] / 1e3 / (P * by_shape[s]["batch"]) for s, n in counts.items())
        out.append({"impl": impl, "numerics": numerics, "population": P, "conv_s_per_image": per_image,
                    "rate": 1 / per_image})
    return out


def roofline(device: str, counts: dict) -> list[dict]:
    """The network's genotype-images/s if each convolution ran at the card's dense peak or moved
    its input and output through HBM once at full bandwidth, whichever is slower; [] on a device
    whose figures are not known."""
    bandwidth = peak_bandwidth(device)
    out = []
    for numerics, dtype in JAX_DTYPES.items():
        peak = peak_flops(device, numerics)
        if bandwidth is None or peak is None:
            continue
        itemsize = jnp.dtype(dtype).itemsize
        per_image = sum(n * max(flops(s, 1) / peak, hbm_bytes(s, 1, itemsize) / bandwidth) for s, n in counts.items())
        out.append({"numerics": numerics, "rate": 1 / per_image})
    return out


def _jax_impls(shape, P: int, numerics: str):
    """impl -> (jitted function, its arguments from the genotypes' inputs `xs` [P, B, h, w, C]
    and kernels `ks` [P, 3, 3, C, O], its output as `[P, B, h', w', O]`)."""
    stride = shape[3]
    conv = functools.partial(layers.conv2d, stride=stride, padding=1)
    per_genotype = lambda y: jnp.moveaxis(grouped.per_genotype(y, P), 3, 0)  # noqa: E731
    return {
        "xla-dense": (jax.jit(lambda xs, ks: tuple(map(conv, xs, ks))),  # separate buffers, as the fused program's
                      lambda xs, ks: (tuple(xs), tuple(ks)), jnp.stack),   # groups of one hold them
        "xla-vmap": (jax.jit(jax.vmap(conv)), lambda xs, ks: (xs, ks), lambda y: y),
        **{impl: (jax.jit(functools.partial(conv, groups=P, width=n * shape[1])),
                  lambda xs, ks: (grouped.to_grouped(xs), grouped.grouped_params(ks)), per_genotype)
           for impl, n in (("xla-grouped", 1), *((f"xla-packed{n}", n) for n in PACKS)) if P % n == 0},
        "xla-shared": (jax.jit(conv), lambda xs, ks: (xs.reshape((-1,) + xs.shape[2:]), ks[0]),
                       lambda y: y.reshape((P, -1) + y.shape[1:])),
    }


def _torch_impls(shape, P: int, numerics: str, xs, ks, device: str):
    """impl -> (a call that runs the P convolutions, its output as `[P, B, h', w', O]` numpy);
    on a GPU each call replays one CUDA graph of them."""
    import torch
    import torch.nn.functional as F

    dtype = torch.bfloat16 if numerics == "bf16" else torch.float32
    stride = shape[3]
    x = torch.from_numpy(np.asarray(xs, np.float32)).to(device, dtype)  # [P, B, h, w, C]
    k = torch.from_numpy(np.asarray(ks, np.float32)).to(device, dtype)  # [P, 3, 3, C, O]
    x_dense = [x[g].permute(0, 3, 1, 2) for g in range(P)]  # NCHW views of NHWC memory: channels-last
    k_dense = [k[g].permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last) for g in range(P)]
    x_grouped = x.permute(1, 0, 4, 2, 3).reshape(x.shape[1], -1, *x.shape[2:4]).contiguous(
        memory_format=torch.channels_last)
    k_grouped = torch.cat(k_dense).contiguous(memory_format=torch.channels_last)
    calls = {
        "torch-dense": lambda: [F.conv2d(a, b, stride=stride, padding=1) for a, b in zip(x_dense, k_dense)],
        "torch-grouped": lambda: [F.conv2d(x_grouped, k_grouped, stride=stride, padding=1, groups=P)],
    }
    cout, checked = shape[1], checked_genotypes(P)
    to_numpy = {
        "torch-dense": lambda ys: np.stack([ys[g][:CHECKED_IMAGES].permute(0, 2, 3, 1).float().cpu().numpy()
                                            for g in checked]),
        "torch-grouped": lambda ys: np.stack([ys[0][:CHECKED_IMAGES, g * cout:(g + 1) * cout].permute(0, 2, 3, 1)
                                              .float().cpu().numpy() for g in checked]),
    }
    out = {}
    for impl, call in calls.items():
        if device == "cuda":
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):  # cudnn.benchmark chooses its algorithms here, not inside the capture
                    call()
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                ys = call()
            out[impl] = (graph.replay, lambda ys=ys, f=to_numpy[impl]: f(ys))
        else:
            ys = call()
            out[impl] = (call, lambda ys=ys, f=to_numpy[impl]: f(ys))
    return out


def _torch_numerics(numerics: str):
    import torch

    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = numerics == "fp32-tf32"


def measure(batch: int = 500, repeats: int = 15, population: int = 1, numerics=("fp32-strict",),
            impls=IMPLS, shapes=SHAPES, calls: int = 1) -> list[dict]:
    """One row per (numerics, shape, impl): median seconds of the P convolutions over `repeats`
    alternating rounds, each round `calls` back-to-back calls (a GPU's queue kept full)."""
    import torch

    device = "cuda" if jax.devices()[0].platform == "gpu" else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("JAX runs on a GPU but this PyTorch has no CUDA: install a CUDA build of torch")
    rng = np.random.default_rng(0)
    rows = []
    for num in numerics:
        _torch_numerics(num)
        for shape in shapes:
            cin, cout, res, _ = shape
            xs = rng.standard_normal((population, batch, res, res, cin)).astype(np.float32)
            ks = (rng.standard_normal((population, 3, 3, cin, cout)) / np.sqrt(9 * cin)).astype(np.float32)
            with layers.numerics(LAYER_NUMERICS[num]):  # TF32 is part of each program's cache key: time inside
                rows += _measure_shape(shape, num, xs, ks, device, impls, repeats, calls)
    return rows


def _measure_shape(shape, num: str, xs, ks, device: str, impls, repeats: int, calls: int) -> list[dict]:
    import torch

    population, batch = xs.shape[:2]
    xj, kj = jax.device_put(xs.astype(JAX_DTYPES[num])), jax.device_put(ks)
    timed, outputs = {}, {}
    for impl, (fn, args_of, unpack) in _jax_impls(shape, population, num).items():
        if impl in impls:
            args = args_of(xj, kj)
            t = time.perf_counter()
            jax.block_until_ready(fn(*args))
            timed[impl] = (functools.partial(fn, *args), jax.block_until_ready, time.perf_counter() - t)
            outputs[impl] = lambda fn=fn, args=args, unpack=unpack: np.asarray(
                unpack(fn(*args))[np.array(checked_genotypes(population)), :CHECKED_IMAGES], np.float32)
    torch_sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for impl, (call, output) in _torch_impls(shape, population, num, xs, ks, device).items():
        if impl in impls:
            timed[impl] = (call, lambda _, s=torch_sync: s(), None)
            outputs[impl] = output
    times = {impl: [] for impl in timed}
    for _ in range(repeats):
        for impl, (call, sync, _) in timed.items():
            t = time.perf_counter()
            for _ in range(calls):
                y = call()
            sync(y)
            times[impl].append((time.perf_counter() - t) / calls)
    reference = outputs["xla-dense"]() if "xla-dense" in outputs else None
    rows = []
    for impl, ts in times.items():
        seconds = float(np.median(ts))
        diff = None  # xla-shared runs one genotype's kernel for all: nothing to compare
        if reference is not None and impl != "xla-shared":
            diff = float(np.max(np.abs(outputs[impl]() - reference)) / np.max(np.abs(reference)))
        rows.append({"numerics": num, "shape": list(shape), "impl": impl, "population": population,
                     "batch": batch, "ms": 1e3 * seconds, "compile_s": timed[impl][2],
                     "tflops": flops(shape, population * batch) / seconds / 1e12, "max_diff": diff})
    return rows


def markdown(report: dict) -> str:
    P, batch = report["population"], report["batch"]
    lines = [f"Device: **{report['device']}**; jax {report['jax']}, torch {report['torch']}; {P} genotype(s) of "
             f"{batch} images per convolution, median of {report['repeats']} alternating rounds of "
             f"{report['calls']} call(s).", "",
             "Per shape (`ms`: the P convolutions; `max diff`: against `xla-dense`, relative to its largest output):", "",
             "| numerics | conv 3x3 | resolution | stride | impl | ms | TFLOP/s | speed / xla-dense | max diff |",
             "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |"]
    dense = {(r["numerics"], tuple(r["shape"])): r["ms"] for r in report["rows"] if r["impl"] == "xla-dense"}
    for r in report["rows"]:
        cin, cout, res, stride = r["shape"]
        base = dense.get((r["numerics"], tuple(r["shape"])))
        speed = f"{base / r['ms']:.2f}" if base else ""
        diff = "" if r["max_diff"] is None else f"{r['max_diff']:.1e}"
        lines.append(f"| {r['numerics']} | {cin}→{cout} | {res} | {stride} | {r['impl']} | {r['ms']:.3f} | "
                     f"{r['tflops']:.3f} | {speed} | {diff} |")
    lines += ["", f"The ceiling these kernels set on W1 (a CIFAR ResNet of {report['blocks']} blocks per stage: "
              "its convolutions alone, each shape as often as the network runs it):", "",
              "| numerics | impl | population | conv µs per genotype-image | genotype-images/s |",
              "| --- | --- | ---: | ---: | ---: |"]
    for c in report["ceiling"]:
        lines.append(f"| {c['numerics']} | {c['impl']} | {c['population']} | {1e6 * c['conv_s_per_image']:.3f} | "
                     f"{c['rate']:,.0f} |")
    if report["roofline"]:
        lines += ["", "Roofline of the same convolutions on this card (each at the dense peak, or reading its input "
                  "and writing its output once from HBM at full bandwidth, whichever is slower):", "",
                  "| numerics | genotype-images/s |", "| --- | ---: |"]
        lines += [f"| {r['numerics']} | {r['rate']:,.0f} |" for r in report["roofline"]]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--population", type=int, default=1, help="genotypes per convolution (P)")
    p.add_argument("--calls", type=int, help="back-to-back calls per timed round (default 20 on a GPU, 1 on a CPU)")
    p.add_argument("--numerics", nargs="+", choices=list(JAX_DTYPES),
                   help="default: all three on a GPU, fp32-strict on a CPU (which has no TF32)")
    p.add_argument("--impls", nargs="+", choices=IMPLS,
                   help="default: all with a population above 1, else xla-dense and torch-dense (the others are the same)")
    p.add_argument("--blocks", type=int, default=9, help="blocks per stage of the network the ceiling is for")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--name", default="cpu-conv-kernels")
    return run_script(p, run_parsed, argv)


def run_parsed(args):
    import torch

    if min(args.batch, args.repeats, args.population, args.blocks, args.calls or 1) < 1:
        raise UserError("--batch, --repeats, --population, --blocks and --calls must be positive")
    gpu = jax.devices()[0].platform == "gpu"
    numerics = args.numerics or (list(JAX_DTYPES) if gpu else ["fp32-strict"])
    if not gpu and "fp32-tf32" in numerics:
        raise UserError("fp32-tf32 needs a GPU (a CPU has no TF32); choose bf16 or fp32-strict")
    calls = args.calls or (20 if gpu else 1)
    impls = args.impls or (IMPLS if args.population > 1 else ("xla-dense", "torch-dense"))
    rows = measure(args.batch, args.repeats, args.population, numerics, impls, calls=calls)
    counts = network_counts(args.blocks)
    device = device_name()
    report = {"device": device, "jax": jax.__version__, "torch": torch.__version__, "batch": args.batch,
              "repeats": args.repeats, "calls": calls, "population": args.population, "blocks": args.blocks,
              "rows": rows, "ceiling": ceiling(rows, counts), "roofline": roofline(device, counts)}
    write_report(report, markdown(report), args.out, args.name)
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
