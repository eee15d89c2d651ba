"""`benchmarks/conv_kernels.py`: every implementation computes the same convolutions, and the
ceiling and roofline it reports are the network's sums."""

import jax
import pytest

from modulenet_jax.benchmarks import conv_kernels as ck

SMALL = ((4, 8, 8, 1), (4, 8, 8, 2))  # both strides, tiny


@pytest.fixture(scope="module")
def rows():
    return ck.measure(batch=2, repeats=1, population=4, numerics=("fp32-strict", "bf16"), shapes=SMALL)


def test_every_implementation_computes_the_dense_convolutions(rows):
    assert {(r["numerics"], tuple(r["shape"]), r["impl"]) for r in rows} == {
        (n, s, i) for n in ("fp32-strict", "bf16") for s in SMALL for i in ck.IMPLS}
    for r in rows:
        assert r["population"] == 4 and r["batch"] == 2 and r["ms"] > 0 and r["tflops"] > 0
        if r["impl"] == "xla-shared":  # one genotype's kernel for all: nothing to compare
            assert r["max_diff"] is None
        elif r["numerics"] == "fp32-strict":
            assert r["max_diff"] <= 1e-5, r
        else:  # bf16 outputs, each rounded once: within a bf16 step of the largest output
            assert r["max_diff"] <= 2 ** -7, r


def test_the_ceiling_is_the_network_time_per_image():
    a, b = SMALL
    rows = [{"impl": "xla-dense", "numerics": "bf16", "population": 2, "batch": 10, "shape": list(a), "ms": 4.0},
            {"impl": "xla-dense", "numerics": "bf16", "population": 2, "batch": 10, "shape": list(b), "ms": 1.0},
            {"impl": "xla-vmap", "numerics": "bf16", "population": 2, "batch": 10, "shape": list(a), "ms": 1.0}]
    (only,) = ck.ceiling(rows, {a: 3, b: 2})  # xla-vmap lacks a shape of the network: no ceiling
    per_image = (3 * 4e-3 + 2 * 1e-3) / 20
    assert only["impl"] == "xla-dense" and only["conv_s_per_image"] == pytest.approx(per_image)
    assert only["rate"] == pytest.approx(1 / per_image)


def test_network_counts_and_roofline():
    counts = ck.network_counts(9)
    assert sum(counts.values()) == 55  # ResNet-56: 55 convolutions and the head
    assert sum(ck.flops(s, 1) * n for s, n in counts.items()) == 250_970_112
    rates = {r["numerics"]: r["rate"] for r in ck.roofline("NVIDIA H200", counts)}
    # bf16: every shape but 64->64 is bound by HBM (2 bytes per activation), fp32-strict by 67 TFLOP/s
    assert rates["bf16"] == pytest.approx(2_144_287, rel=1e-6)
    assert rates["fp32-strict"] == pytest.approx(266_750, rel=1e-5)
    assert ck.roofline("CPU (AMD EPYC, 2 cores, 1 JAX device(s))", counts) == []


def test_markdown_has_every_row_and_the_ceiling(rows):
    counts = dict.fromkeys(SMALL, 1)
    report = {"device": "CPU", "jax": "x", "torch": "y", "batch": 2, "repeats": 1, "calls": 1, "population": 4,
              "blocks": 1, "rows": rows, "ceiling": ck.ceiling(rows, counts), "roofline": []}
    text = ck.markdown(report)
    assert text.count("| fp32-strict | 4→8 |") == 2 * len(ck.IMPLS)
    assert len(report["ceiling"]) == 2 * len(ck.IMPLS)
    assert "| bf16 | torch-grouped | 4 |" in text


@pytest.mark.skipif(jax.devices()[0].platform != "cpu", reason="a GPU has TF32")
@pytest.mark.parametrize("argv, message", [
    (["--population", "0"], "must be positive"),
    (["--numerics", "fp32-tf32"], "needs a GPU"),
])
def test_bad_input_is_one_line_and_status_2(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        ck.main([*argv, "--out", str(tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
