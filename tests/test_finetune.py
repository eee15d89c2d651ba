"""`modulenet finetune DIR`: an exported network trained in its folder, loadable with the same
call afterwards; the fidelity measurement fine-tunes through the same trainer."""

import dataclasses
import json

import numpy as np
import pytest

from modulenet_jax import export, train
from modulenet_jax.cli import main
from modulenet_jax.data import load_bundle, protocol_split, save_bundle
from modulenet_jax.errors import UserError
from modulenet_jax.evaluate import Evaluator
from modulenet_jax.fidelity import FINETUNE, measure, sample_genotypes
from modulenet_jax.network import evaluate, from_fitted
from modulenet_jax.protocol import Protocol
from modulenet_jax.ranking import kendall
from modulenet_jax.space import Architecture

PROTOCOL = Protocol(fit_images=64, stitch_images=32, batch_size=32, head_steps=10)


@pytest.fixture
def exported(tiny_kb, tiny_dataset, tmp_path):
    """An exported tiny source network whose origin names a dataset bundle (no run needed)."""
    save_bundle(tiny_dataset, tmp_path / "tiny.npz", None, seed=0)
    arch = Architecture.of_source(tiny_kb, "cifar_resnet8")
    evaluator = Evaluator(tiny_kb, PROTOCOL, protocol_split(tiny_dataset, "train", 64, seed=0))
    model, variables = from_fitted(evaluator.fit(arch), ("cifar_resnet8",) * len(arch.modules))
    origin = {"data": {"source": str(tmp_path / "tiny.npz"), "data_dir": None},
              "final": {"split": "final", "size": None}, "protocol": {"batch_size": 32}}
    records = [tiny_kb.record(m) for m in arch.modules]
    return export.save(tmp_path / "model", model, variables, records, {"origin": origin})


def test_finetune_trains_in_the_folder_and_load_gives_the_result(exported, capsys):
    argv = ["finetune", str(exported), "--epochs", "2", "--images", "64", "--batch-size", "16", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    metrics = [json.loads(line) for line in (exported / "finetune" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2] and result["metrics"] == metrics[-1]
    assert export.read_description(exported)["finetune"]["settings"]["epochs"] == 2
    model, tuned = export.load(exported)
    _, original = export.load(exported, finetuned=False)
    final = protocol_split(load_bundle(exported.parent / "tiny.npz"), "final")
    assert evaluate(model, tuned, final, 32)[0] == metrics[-1]["eval_correct"]
    assert not np.array_equal(tuned["params"]["head"]["kernel"], original["params"]["head"]["kernel"])
    assert main(argv) == 0  # finished with these settings: nothing to do
    assert capsys.readouterr().err.startswith(f"{exported} is already fine-tuned")
    assert main(argv[:3] + ["3"] + argv[4:]) == 2  # other settings need --restart
    assert "(epochs: 2 there, 3 here); pass --restart" in capsys.readouterr().err
    assert main(argv[:3] + ["1"] + argv[4:] + ["--restart"]) == 0
    assert export.read_description(exported)["finetune"]["settings"]["epochs"] == 1


def _other_data(tiny_dataset, path, classes=None, size=None):
    """The tiny data with labels folded onto fewer classes, or images padded to another size."""
    import dataclasses

    def change(split):
        images = np.pad(split.images, ((0, 0), (0, size - 32), (0, size - 32), (0, 0))) if size else split.images
        return dataclasses.replace(split, images=images, labels=split.labels % (classes or split.num_classes),
                                   num_classes=classes or split.num_classes)

    other = dataclasses.replace(tiny_dataset, train=change(tiny_dataset.train), test=change(tiny_dataset.test),
                                classes=None)
    return str(save_bundle(other, path, None, seed=0))


@pytest.mark.parametrize("args, message", [(["--warmup", "1.5"], "warm-up in [0, 1)"),
                                           (["--images", "8"], "holds no batch of 128"),
                                           (["--data", "three"], "has 3 classes, the network's head 10"),
                                           (["--data", "big"], "images are 40 px, the network's modules were cut "
                                                               "at 32 px")])
def test_bad_finetune_input_is_one_line_and_status_2(exported, tiny_dataset, capsys, args, message):
    if args[0] == "--data":
        kind = {"three": {"classes": 3}, "big": {"size": 40}}[args[1]]
        args = ["--data", _other_data(tiny_dataset, exported.parent / f"{args[1]}.npz", **kind)]
    assert main(["finetune", str(exported), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("modulenet finetune: error: ") and err.count("\n") == 1 and message in err, err


def test_finetune_of_a_folder_that_is_no_export(tmp_path, capsys):
    assert main(["finetune", str(tmp_path)]) == 2
    assert "is not an exported network" in capsys.readouterr().err


def test_fidelity_fine_tunes_through_the_trainer(tiny_kb, tiny_dataset, tmp_path):
    networks = sample_genotypes(tiny_kb, ["run"], 2, seed=0) + [("source", Architecture.of_source(tiny_kb,
                                                                                                  "cifar_resnet8"))]
    settings = train.Settings(**{**FINETUNE.to_json(), "images": 32, "batch_size": 16})
    report = measure(tiny_kb, tiny_dataset, PROTOCOL, {"stitch": {}, "plain": {"stitch": False}}, networks,
                     settings, 32, 0, tmp_path, log=lambda m: None)
    assert report["networks"] == 3 and report["finetune"]["clip_norm"] == 1.0
    assert all(0 <= r["finetuned"] <= 1 for r in report["rows"])
    # "random only" leaves the source out
    assert report["agreement"]["stitch"]["n"] == 3 and report["agreement_random_only"]["stitch"]["n"] == 2
    randoms = [r for r in report["rows"] if r["kind"] != "source"]
    assert report["tau_random_only"]["stitch"] == pytest.approx(
        kendall([r["scores"]["stitch"] for r in randoms], [r["finetuned"] for r in randoms]), nan_ok=True)
    again = measure(tiny_kb, tiny_dataset, PROTOCOL, {"stitch": {}, "plain": {"stitch": False}}, networks,
                    settings, 32, 0, tmp_path, log=lambda m: None)
    assert again["rows"] == report["rows"]  # resumed from results.jsonl, nothing fine-tuned again
    other_rate = dataclasses.replace(PROTOCOL, stitch_lr=PROTOCOL.stitch_lr * 10)  # inert: nothing tunes
    assert measure(tiny_kb, tiny_dataset, other_rate, {"stitch": {}, "plain": {"stitch": False}}, networks,
                   settings, 32, 0, tmp_path, log=lambda m: None)["rows"] == report["rows"]
    saved = json.loads((tmp_path / "settings.json").read_text())
    (tmp_path / "settings.json").write_text(json.dumps({**saved, "variants": {"stitch": {"stitch_steps": 2},
                                                                             "plain": {"stitch": False}}}))
    with pytest.raises(UserError, match=r"other settings \(base_protocol: "):  # a tuned variant: the rate counts
        measure(tiny_kb, tiny_dataset, other_rate, {"stitch": {"stitch_steps": 2}, "plain": {"stitch": False}},
                networks, settings, 32, 0, tmp_path, log=print)
    (tmp_path / "settings.json").write_text(json.dumps(saved))
    with pytest.raises(UserError, match=r"holds a measurement with other settings \(variants: "):
        measure(tiny_kb, tiny_dataset, PROTOCOL, {"stitch": {}}, networks, settings, 32, 0, tmp_path, log=print)
    with pytest.raises(UserError, match=r"other settings \(finetune: "):  # its rows would pass for these
        measure(tiny_kb, tiny_dataset, PROTOCOL, {"stitch": {}, "plain": {"stitch": False}}, networks,
                train.Settings(**{**settings.to_json(), "epochs": 2}), 32, 0, tmp_path, log=print)


def test_final_table_fine_tunes_every_row_once(tiny_kb, tiny_dataset, tmp_path):
    from modulenet_jax.config import load_config
    from modulenet_jax.search.runner import Run, final_table, search

    overrides = ["search.population=4", "search.generations=1", "protocol.fit_images=64", "protocol.stitch_images=32",
                 "protocol.batch_size=32", "protocol.head_steps=10", "data.val_size=32", "final.size=32",
                 "final.finetune.epochs=1", "final.finetune.images=32", "final.finetune.batch_size=16"]
    run = Run.from_config(load_config("cifar10_resnet", overrides), kb=tiny_kb, dataset=tiny_dataset)
    result = search(run, tmp_path, log=lambda m: None)
    rows = final_table(run, result, tmp_path, log=lambda m: None)
    for r in rows:
        folder = tmp_path / "models" / r["name"]
        assert export.read_description(folder)["verified"]["correct"] == r["final_correct"]
        metrics = json.loads((folder / "finetune" / "metrics.jsonl").read_text())
        assert (r["finetuned_correct"], r["finetuned_total"]) == (metrics["eval_correct"], metrics["eval_total"]) \
            and r["finetuned_total"] == r["final_total"]
    assert "after fine-tune" in (tmp_path / "final.md").read_text()
    logs = []
    assert final_table(run, result, tmp_path, log=logs.append) == rows  # resumed: nothing exported or trained again
    assert not any(m.startswith(("exported", "epoch")) for m in logs)
    assert sum("already fine-tuned" in m for m in logs) == len(rows)


def test_a_finetuned_folder_without_its_record_is_not_a_finished_finetune(tmp_path):
    from modulenet_jax import export
    export.write_description(tmp_path, {"format": export.FORMAT_VERSION})
    (tmp_path / export.FINETUNED_DIR).mkdir()
    assert not export.is_finetuned(tmp_path)
    export.write_description(tmp_path, {"format": export.FORMAT_VERSION, "finetune": {}})
    assert export.is_finetuned(tmp_path)
