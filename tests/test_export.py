"""Exported networks: a Flax module that counts what the protocol counted, loads without the
knowledge base, and a `modulenet export` that checks this against the run's final table."""

import json
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from modulenet_jax import export
from modulenet_jax.cli import main
from modulenet_jax.data import load_bundle, load_dataset, protocol_split, save_bundle
from modulenet_jax.evaluate import Evaluator
from modulenet_jax import zoo
from modulenet_jax.network import Network, evaluate, from_fitted
from modulenet_jax.protocol import Protocol
from modulenet_jax.space import Architecture, SearchSpace
from tests.conftest import CIFAR_JPEG, needs_shared

pytestmark = pytest.mark.xdist_group("export")  # module fixtures built once (make test: --dist loadgroup)

SMALL = ["search.population=4", "search.generations=2", "protocol.fit_images=64", "protocol.stitch_images=32",
         "protocol.batch_size=32", "protocol.head_steps=10", "data.val_size=32", "final.size=64"]


def _junction_archs(kb, n=2):
    """`n` block-granularity networks of the tiny base with at least two junctions each."""
    space, rng, out = SearchSpace(kb, "block"), np.random.default_rng(3), []
    while len(out) < n:
        arch = space.decode(space.sample(rng))
        if arch.num_junctions(kb) >= 2:
            out.append(arch)
    return out


def _models(kb, arch):
    return tuple(kb.source(kb.record(m).source).model for m in arch.modules)


@pytest.mark.parametrize("bn", ["recalibrate", "source"])
def test_the_flax_network_counts_what_the_protocol_counts(tiny_kb, tiny_dataset, tmp_path, bn):
    protocol = Protocol(fit_images=64, stitch_images=32, batch_size=32, head_steps=10, bn=bn)
    evaluator = Evaluator(tiny_kb, protocol, protocol_split(tiny_dataset, "train", 64, seed=0))
    for i, arch in enumerate(_junction_archs(tiny_kb)):
        expected = evaluator.evaluate(arch, tiny_dataset.test).correct
        model, variables = from_fitted(evaluator.fit(arch), _models(tiny_kb, arch))
        assert sum(model.junctions) == arch.num_junctions(tiny_kb)
        assert evaluate(model, variables, tiny_dataset.test, 32) == (expected, len(tiny_dataset.test))
        export.save(tmp_path / str(i), model, variables, [tiny_kb.record(m) for m in arch.modules], {})
        loaded, loaded_variables = export.load(tmp_path / str(i))
        assert loaded == model
        assert evaluate(loaded, loaded_variables, tiny_dataset.test, 32)[0] == expected
        # a fresh init has the exported variables' structure and shapes (traced only: no random program compiled)
        fresh = jax.eval_shape(model.init, jax.random.PRNGKey(0), tiny_dataset.test.images[:2])
        assert jax.tree_util.tree_structure(fresh) == jax.tree_util.tree_structure(variables)
        assert jax.tree_util.tree_map(lambda a: a.shape, fresh) == jax.tree_util.tree_map(np.shape, variables)


def test_a_tensorfloat32_network_exports_with_its_numerics(tiny_kb, tiny_dataset, tmp_path):
    """A network fitted under `tensorfloat32` exports as such: its convolutions ask for TF32
    (`HIGH`, never `HIGHEST`), it counts what the protocol counts, and it saves and loads."""
    protocol = Protocol(fit_images=64, stitch_images=32, batch_size=32, head_steps=10, dtype="tensorfloat32")
    evaluator = Evaluator(tiny_kb, protocol, protocol_split(tiny_dataset, "train", 64, seed=0))
    arch = _junction_archs(tiny_kb, 1)[0]
    model, variables = from_fitted(evaluator.fit(arch), _models(tiny_kb, arch), protocol.dtype)
    assert evaluate(model, variables, tiny_dataset.test, 32)[0] == evaluator.evaluate(arch, tiny_dataset.test).correct
    text = jax.jit(model.apply).lower(variables, tiny_dataset.test.images[:2]).as_text()
    convolutions = [line for line in text.splitlines() if "stablehlo.convolution" in line]
    assert convolutions and all("precision HIGH>" in c for c in convolutions)
    export.save(tmp_path, model, variables, [tiny_kb.record(m) for m in arch.modules], {})
    assert export.load(tmp_path)[0] == model


def test_training_mode_updates_running_statistics_like_pytorch(tiny_kb, tiny_dataset):
    protocol = Protocol(fit_images=64, stitch_images=32, batch_size=32, head_steps=10)
    evaluator = Evaluator(tiny_kb, protocol, protocol_split(tiny_dataset, "train", 64, seed=0))
    arch = _junction_archs(tiny_kb, 1)[0]
    model, variables = from_fitted(evaluator.fit(arch), _models(tiny_kb, arch))
    images = tiny_dataset.train.images[:16]
    _, updated = model.apply(variables, images, train=True, mutable=["batch_stats"])
    old = variables["batch_stats"]["module0"]["bn"]
    new = updated["batch_stats"]["module0"]["bn"]
    x = (images.astype(np.float32) / 255 - np.asarray(model.mean)) / np.asarray(model.std)
    kernel = np.asarray(variables["params"]["module0"]["conv"]["kernel"])
    y = jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     precision=jax.lax.Precision.HIGHEST)
    mean, var = np.mean(y, axis=(0, 1, 2)), np.var(y, axis=(0, 1, 2), ddof=1)
    np.testing.assert_allclose(new["mean"], 0.9 * old["mean"] + 0.1 * mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(new["var"], 0.9 * old["var"] + 0.1 * var, rtol=1e-4, atol=1e-5)


def _bundle(folder):
    """The tiny dataset, read back from the run's bundle."""
    return load_bundle(folder / "tiny.npz")


@pytest.fixture(scope="module")
def tiny_run(tiny_kb, tiny_dataset, tmp_path_factory):
    """A finished run folder of a tiny search (`run/`) whose config names a saved knowledge base
    (`kb/`) and a dataset bundle (`tiny.npz`), so the run can be opened again from its folder."""
    folder = tmp_path_factory.mktemp("export")
    tiny_kb.save(folder / "kb")
    save_bundle(tiny_dataset, folder / "tiny.npz", None, seed=0)
    assert main(["search", "--config", "cifar10_resnet", "--out", str(folder / "run"), "--set",
                 f"knowledge.path={folder / 'kb'}", f"data.source={folder / 'tiny.npz'}", *SMALL]) == 0
    return folder


def test_export_reproduces_the_final_table_and_loads_without_the_knowledge_base(tiny_run, capsys):
    rows = json.loads((tiny_run / "run" / "final.json").read_text())["rows"]
    found = max((r for r in rows if r["kind"] == "found"), key=lambda r: r["junctions"])
    assert found["junctions"] >= 1
    for row in (found, rows[0]):
        out = tiny_run / "models" / row["name"]
        assert main(["export", str(tiny_run / "run"), row["name"], "--out", str(out)]) == 0
        assert f"{row['final_correct']}/{row['final_total']} correct" in capsys.readouterr().out
        description = export.read_description(out)
        assert description["verified"]["matches"] and description["verified"]["correct"] == row["final_correct"]
        assert description["origin"]["name"] == row["name"] and description["params"] == row["params"]
        assert [m["id"] for m in description["network"]["modules"]] == row["modules"]
        assert sum(m["stitch"] is not None for m in description["network"]["modules"]) == row["junctions"]
    shutil.rmtree(tiny_run / "kb")  # the exported folder alone: no knowledge base anywhere
    images = tiny_run / "final.npy"
    np.save(images, protocol_split(_bundle(tiny_run), "final", 64).images)
    script = ("import sys, numpy as np, jax.numpy as jnp, modulenet_jax.export as e\n"
              "model, variables = e.load(sys.argv[1])\n"
              "print(np.asarray(jnp.argmax(model.apply(variables, np.load(sys.argv[2])), -1)).tolist())\n")
    ran = subprocess.run([sys.executable, "-c", script, str(tiny_run / "models" / found["name"]), str(images)],
                         capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    predicted = np.asarray(json.loads(ran.stdout))
    labels = protocol_split(_bundle(tiny_run), "final", 64).labels
    assert int(np.sum(predicted == labels)) == found["final_correct"]


def _fake_run(folder):
    """A run folder with a config and a final table (what the name check reads), no search."""
    folder.mkdir()
    (folder / "config.json").write_text("{}\n")
    rows = [{"name": "front0", "modules": ["a/stem"]}, {"name": "cifar_resnet8", "modules": ["a/stem"]}]
    (folder / "final.json").write_text(json.dumps({"split": "x", "rows": rows}))
    return folder


@pytest.mark.parametrize("case, message", [
    ("no run", "is not a run folder (no config.json)"),
    ("unfinished run", "has no final.json"),
    ("unknown name", "no network 'front7' in the final table; its names: front0, cifar_resnet8"),
    ("out not empty", "already exists and is not an empty folder"),
])
def test_bad_export_input_is_one_line_and_status_2(tmp_path, capsys, case, message):
    run = tmp_path / "run"
    if case == "unfinished run":
        run.mkdir()
        (run / "config.json").write_text("{}\n")
    elif case != "no run":
        _fake_run(run)
    out = tmp_path / "out"
    if case == "out not empty":
        out.mkdir()
        (out / "x").write_text("")
    assert main(["export", str(run), "front7", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("modulenet export: error: ") and err.count("\n") == 1 and message in err, err


@needs_shared
def test_a_real_network_with_junctions_counts_exactly(real_kb):
    """Real weights and images: a network of resnet20 and resnet56 modules with two junctions,
    500 final images, the default protocol at 256 fit images."""
    dataset = load_dataset(str(CIFAR_JPEG))
    protocol = Protocol(fit_images=256, stitch_images=256)
    evaluator = Evaluator(real_kb, protocol, protocol_split(dataset, "train", 256, seed=0))
    r20, r56 = (Architecture.of_source(real_kb, f"cifar_resnet{d}").modules for d in (20, 56))
    arch = Architecture(r20[:4] + r56[10:12] + r20[7:])  # stem + stage 1 of r20, two r56 blocks, r20's stage 3
    final = protocol_split(dataset, "final", 500)
    expected = evaluator.evaluate(arch, final)
    model, variables = from_fitted(evaluator.fit(arch), _models(real_kb, arch))
    assert sum(model.junctions) == expected.junctions == 2
    assert evaluate(model, variables, final, protocol.batch_size) == (expected.correct, 500)


def test_a_fresh_network_has_pytorchs_fresh_running_statistics():
    """`init` gives BatchNorm mean 0 and variance 1, as a fresh PyTorch BatchNorm has."""
    src = zoo.get_model("cifar_resnet8")
    specs = src.modules[:-1]
    net = Network(specs=specs, models=(src.name,) * len(specs), junctions=(False,) * len(specs), num_classes=10,
                  mean=src.mean, std=src.std)
    stats = net.init(jax.random.PRNGKey(0), np.zeros((2, 32, 32, 3), np.uint8))["batch_stats"]
    leaves = jax.tree_util.tree_flatten_with_path(stats)[0]
    assert leaves and all(np.all(np.asarray(v) == (0.0 if p[-1].key == "mean" else 1.0)) for p, v in leaves)


def test_export_costs_a_stitch_at_its_modules_input_resolution(tiny_kb):
    from types import SimpleNamespace
    from modulenet_jax.export import network_json
    ids = ["cifar_resnet14/stem", "cifar_resnet14/stage1.block0", "cifar_resnet14/stage1.block1",
           "cifar_resnet8/stage2.block0"]
    recs = [tiny_kb.record(i) for i in ids]
    model = SimpleNamespace(models=("m",) * 4, junctions=(False, False, False, True), specs=tuple(r.spec for r in recs),
                            num_classes=10, mean=(0, 0, 0), std=(1, 1, 1), input_size=None, dtype="float32",
                            bn_momentum=0.1)
    stitch = network_json(model, recs)["modules"][3]["stitch"]
    assert stitch == {"in_channels": 16, "out_channels": 16, "params": 16 * 16 + 16, "flops": 2 * 32 * 32 * 16 * 16}
