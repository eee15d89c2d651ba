"""Where the CPU time of a CIFAR ResNet goes: each 3x3 convolution shape of the network, as XLA
runs it for `layers.conv2d` and as PyTorch runs `F.conv2d` (oneDNN, channels-last), timed
alternately in one process on the same input, batch 500, fp32.

    python -m modulenet_jax.benchmarks.conv_kernels --out benchmarks/results --name cpu-2core-amd-epyc-conv

Apply `cpu_runtime.configure()` first, as the `modulenet` command does (this script does).
"""

from __future__ import annotations

import argparse
import time

from modulenet_jax import cpu_runtime

cpu_runtime.configure()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from .throughput import device_name, write_report  # noqa: E402
from modulenet_jax.errors import run_script  # noqa: E402
from modulenet_jax.zoo import layers  # noqa: E402

# (input channels, output channels, input resolution, stride): every 3x3 conv shape of a CIFAR ResNet
SHAPES = ((3, 16, 32, 1), (16, 16, 32, 1), (16, 32, 32, 2), (32, 32, 16, 1), (32, 64, 16, 2), (64, 64, 8, 1))


def measure(batch: int = 500, repeats: int = 15) -> list[dict]:
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    rows = []
    for cin, cout, res, stride in SHAPES:
        x = rng.standard_normal((batch, res, res, cin)).astype(np.float32)
        k = (0.1 * rng.standard_normal((3, 3, cin, cout))).astype(np.float32)
        xj, kj = jax.device_put(x), jax.device_put(k)
        xt = torch.from_numpy(x).permute(0, 3, 1, 2)  # NCHW view of NHWC memory: channels-last
        kt = torch.from_numpy(k).permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last)
        f = jax.jit(lambda a, b: layers.conv2d(a, b, stride=stride, padding=1))
        with torch.no_grad():
            yt = F.conv2d(xt, kt, stride=stride, padding=1)
            diff = float(np.max(np.abs(np.asarray(f(xj, kj)) - yt.permute(0, 2, 3, 1).numpy())))
            times = {"xla": [], "onednn": []}
            for _ in range(repeats):
                t = time.perf_counter()
                f(xj, kj).block_until_ready()
                times["xla"].append(time.perf_counter() - t)
                t = time.perf_counter()
                F.conv2d(xt, kt, stride=stride, padding=1)
                times["onednn"].append(time.perf_counter() - t)
        flop = 2 * batch * (res // stride) ** 2 * 9 * cin * cout
        row = {"in": cin, "out": cout, "resolution": res, "stride": stride, "max_abs_diff": diff}
        for name, ts in times.items():
            row[f"{name}_ms"] = round(1e3 * float(np.median(ts)), 2)
            row[f"{name}_gflops"] = round(flop / float(np.median(ts)) / 1e9, 1)
        row["xla_over_onednn"] = round(row["onednn_ms"] / row["xla_ms"], 3)
        rows.append(row)
    return rows


def markdown(report: dict) -> str:
    lines = [f"Device: **{report['device']}**; jax {report['jax']}, torch {report['torch']}; batch "
             f"{report['batch']}, fp32, median of {report['repeats']} alternating runs.", "",
             "| conv 3x3 | resolution | stride | XLA ms | XLA GFLOP/s | oneDNN ms | oneDNN GFLOP/s | XLA speed / oneDNN |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in report["rows"]:
        lines.append(f"| {r['in']}→{r['out']} | {r['resolution']} | {r['stride']} | {r['xla_ms']} | {r['xla_gflops']} | "
                     f"{r['onednn_ms']} | {r['onednn_gflops']} | {r['xla_over_onednn']:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--name", default="cpu-conv-kernels")
    return run_script(p, run_parsed, argv)


def run_parsed(args):
    import torch

    report = {"device": device_name(), "jax": jax.__version__, "torch": torch.__version__, "batch": args.batch,
              "repeats": args.repeats, "rows": measure(args.batch, args.repeats)}
    write_report(report, markdown(report), args.out, args.name)
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
