"""`modulenet runs show` and `runs compare`: run folders read back, hypervolumes against the
fixed reference point, one plot."""

import json

import pytest

from modulenet_jax.cli import main
from modulenet_jax.config import load_config, to_dict
from modulenet_jax.runs import HV_REFERENCE, hypervolume, load_run


def _record(i, error, params):
    return {"generation": 0, "genotype": [i, 1], "canonical": [i, 1], "architecture": f"net{i}", "modules": [],
            "correct": round((1 - error) * 500), "total": 500, "params": params, "flops": 2 * params, "junctions": 1,
            "accuracy": 1 - error, "error": error, "seconds": 0.1}


def _write_run(folder, points, done=2, generations=2):
    """A run folder as `modulenet search` leaves it, from (error, params) points."""
    folder.mkdir()
    config = to_dict(load_config("cifar10_resnet", [f"search.generations={generations}"]))
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "state.json").write_text(json.dumps({"generation": done}))
    lines = (json.dumps(_record(i, e, p)) + "\n" for i, (e, p) in enumerate(points))
    (folder / "history.jsonl").write_text("".join(lines))
    return folder


def test_hypervolume_is_the_share_of_the_reference_box_the_front_dominates():
    assert HV_REFERENCE == (1.0, 1_000_000)
    one = [_record(0, 0.5, 500_000)]
    assert hypervolume(one) == pytest.approx(0.25)
    assert hypervolume(one + [_record(1, 0.6, 600_000)]) == pytest.approx(0.25)  # dominated: adds nothing
    assert hypervolume(one + [_record(2, 0.2, 900_000)]) == pytest.approx(0.25 + 0.3 * 0.1)
    assert hypervolume(one + [_record(3, 0.1, 2_000_000)]) == pytest.approx(0.25)  # beyond the reference
    assert hypervolume(one, reference=(1.0, 2_000_000)) == pytest.approx(0.5 * 0.75)
    assert hypervolume([]) == 0.0


def test_runs_show_prints_the_front_and_draws_it(tmp_path, capsys):
    run = _write_run(tmp_path / "a", [(0.5, 500_000), (0.6, 600_000), (0.2, 900_000)], done=1)
    assert main(["runs", "show", str(run), "--json", "--plot", str(tmp_path / "a.png")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "unfinished" and out["generations"] == "1/2" and out["evaluated"] == 3
    assert [r["params"] for r in out["front"]] == [500_000, 900_000] and out["front"][0]["genotype"] == "[0, 1]"
    assert out["hypervolume"] == pytest.approx(0.28)
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["runs", "show", str(run)]) == 0
    text = capsys.readouterr().out
    assert "unfinished, generation 1/2, 3 networks, hypervolume 0.2800" in text and "net2" in text
    assert main(["runs", "show", str(run), "--json", "--reference", "1", "2000000", "--plot", str(tmp_path / "b")]) == 0
    out = json.loads(capsys.readouterr().out)  # the hypervolume against the reference given, the plot as PNG
    assert out["hypervolume"] == pytest.approx(0.5 * 0.75 + 0.3 * 0.55) and out["plot"] == str(tmp_path / "b.png")
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"


def test_runs_compare_puts_runs_side_by_side(tmp_path, capsys):
    a = _write_run(tmp_path / "a", [(0.5, 500_000)])
    b = _write_run(tmp_path / "b", [(0.5, 500_000), (0.2, 900_000)])
    plot = tmp_path / "both.png"
    assert main(["runs", "compare", str(a), str(b), "--plot", str(plot), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["hypervolume"] for r in out["runs"]] == [pytest.approx(0.25), pytest.approx(0.28)]
    assert out["reference"] == [1.0, 1_000_000] and plot.read_bytes()[:4] == b"\x89PNG"
    assert main(["runs", "compare", str(a), str(b), "--plot", str(plot), "--reference", "1", "2000000"]) == 0
    assert "0.3750" in capsys.readouterr().out  # (1 - 0.5) x (1 - 0.25): the same front, a larger box


def test_a_run_folder_is_read_as_it_stands(tmp_path):
    run = load_run(_write_run(tmp_path / "a", [(0.5, 500_000)], done=2))
    assert run.finished and run.final is None and len(run.front) == 1


def test_runs_compare_names_each_runs_most_accurate_network(tmp_path, capsys):
    a = _write_run(tmp_path / "a", [(0.5, 500_000), (0.2, 900_000), (0.6, 100_000)])
    assert main(["runs", "compare", str(a), "--json", "--plot", str(tmp_path / "p.png")]) == 0
    row = json.loads(capsys.readouterr().out)["runs"][0]
    assert (row["best_accuracy"], row["best_params"]) == (pytest.approx(0.8), 900_000)
