"""A whole search run on a tiny knowledge base: the run folder, and resume == uninterrupted
even when killed in the middle of a generation."""

import json
import shutil
from pathlib import Path

import pytest

from modulenet_jax.config import load_config
from modulenet_jax.knowledge import KnowledgeBase
from modulenet_jax.space import Architecture
from modulenet_jax.search.runner import Run, final_table, plot_front, search
from tests.conftest import random_models

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "cifar10_resnet.py"
SMALL = ["search.population=4", "search.generations=3", "protocol.fit_images=64", "protocol.stitch_images=32",
         "protocol.batch_size=32", "protocol.head_steps=10", "data.val_size=32", "final.size=32"]


def small_run(tiny_kb, tiny_dataset, extra=()):
    """The default config at tiny sizes (`SMALL` and `extra` applied) on the tiny data and knowledge base."""
    return Run.from_config(load_config(CONFIG, SMALL + list(extra)), kb=tiny_kb, dataset=tiny_dataset)


def without_times(history_text):
    """A history file's records without their wall times, to compare two runs."""
    rows = [json.loads(line) for line in history_text.splitlines()]
    for r in rows:
        r.pop("seconds")
    return rows


class Interrupt(Exception):
    pass


def test_resume_after_kill_equals_uninterrupted(tiny_kb, tiny_dataset, tmp_path):
    full = tmp_path / "full"
    result = search(small_run(tiny_kb, tiny_dataset), full, log=lambda m: None)
    assert result["evaluated"] == len((full / "history.jsonl").read_text().splitlines())

    part = tmp_path / "part"
    run = small_run(tiny_kb, tiny_dataset)
    real = run.evaluator.cost  # called once per network evaluated, as its evaluation is completed
    calls = {"n": 0}

    def dying(arch):
        calls["n"] += 1
        if calls["n"] == 6:  # in the middle of the second generation
            raise Interrupt
        return real(arch)

    run.evaluator.cost = dying
    with pytest.raises(Interrupt):
        search(run, part, log=lambda m: None)
    assert json.loads((part / "state.json").read_text())["generation"] == 1
    with open(part / "history.jsonl", "a") as f:
        f.write('{"torn": ')  # a line cut by the kill
    logs = []
    search(small_run(tiny_kb, tiny_dataset), part, log=logs.append)
    assert logs[1].startswith(f"resuming {part} after generation 1 (5 networks already evaluated)")
    assert without_times((part / "history.jsonl").read_text()) == without_times((full / "history.jsonl").read_text())
    assert (part / "state.json").read_text() == (full / "state.json").read_text()
    assert (part / "front.json").read_text() == (full / "front.json").read_text()


def test_run_folder_contents_and_final_table(tiny_kb, tiny_dataset, tmp_path):
    run = small_run(tiny_kb, tiny_dataset, ["search.generations=1"])
    result = search(run, tmp_path, log=lambda m: None)
    rows = final_table(run, result, tmp_path, log=lambda m: None)
    assert {r["name"] for r in rows if r["kind"] == "source"} == {"cifar_resnet8", "cifar_resnet14"}
    assert all(r["final_total"] == 32 for r in rows)
    from modulenet_jax.search.run_folder import read_history

    # the found rows: the found networks no other found network dominates on val (sources left out)
    history = read_history(tmp_path / "history.jsonl")
    sources = {Architecture.of_source(run.kb, s).modules for s in run.space.sources}
    found = [h for h in history if tuple(h["modules"]) not in sources]
    dominated = [h for h in found if any(o["error"] <= h["error"] and o["params"] <= h["params"] and
                                         (o["error"], o["params"]) != (h["error"], h["params"]) for o in found)]
    assert sorted(tuple(r["modules"]) for r in rows if r["kind"] == "found") == sorted(
        {tuple(h["modules"]) for h in found} - {tuple(h["modules"]) for h in dominated})
    assert {r["name"] for r in rows if r["kind"] == "found"} == {f"front{i}" for i in range(len(result["found_front"]))}

    plot_front(read_history(tmp_path / "history.jsonl"), result["front"], rows, tmp_path / "front.png", run.objectives)
    for name in ("config.json", "history.jsonl", "state.json", "front.json", "final.json", "final.md", "front.png"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "front.png").read_bytes()[:4] == b"\x89PNG"


def test_a_different_config_does_not_resume(tiny_kb, tiny_dataset, tmp_path):
    search(small_run(tiny_kb, tiny_dataset, ["search.generations=1"]), tmp_path, log=lambda m: None)
    with pytest.raises(ValueError, match="different config"):
        search(small_run(tiny_kb, tiny_dataset, ["search.generations=1", "seed=5"]), tmp_path, log=lambda m: None)


def test_a_clone_elsewhere_resumes_the_run_folder(tiny_kb, tiny_dataset, tmp_path):
    """config.json holds nothing derived from where the checkout is: the config file of a clone
    in another folder gives the same config.json, so the run resumes instead of being refused."""
    def run(clone):
        shutil.copytree(CONFIG.parent, tmp_path / clone / "configs")
        config = load_config(tmp_path / clone / "configs" / CONFIG.name, SMALL + ["search.generations=1"])
        return Run.from_config(config, kb=tiny_kb, dataset=tiny_dataset)

    search(run("clone-a"), tmp_path / "run", log=lambda m: None)
    logs = []
    search(run("elsewhere/clone-b"), tmp_path / "run", log=logs.append)
    assert logs[1].startswith(f"resuming {tmp_path / 'run'} after generation 1")
    assert str(tmp_path) not in (tmp_path / "run" / "config.json").read_text()


def test_fused_and_loop_strategies_give_the_same_search(tiny_kb, tiny_dataset, tmp_path):
    """The module path, the fused program and the fused program fitting and scoring its chunks of 4 in the
    grouped layout (`evaluator.grouped_layout`) find the same networks with the same evaluations."""
    extra = ["search.generations=2", "evaluator.chunk_size=4", "protocol.head='ridge'"]  # ridge: a quicker compile
    search(small_run(tiny_kb, tiny_dataset, extra + ["evaluator.strategy='loop'"]), tmp_path / "loop", log=lambda m: None)
    for name, more in (("fused", []), ("grouped", ["evaluator.grouped_layout=True", "evaluator.group=4"])):
        run = small_run(tiny_kb, tiny_dataset, extra + ["evaluator.strategy='fused'"] + more)
        assert run.population is not None and run.population.grouped_layout == bool(more)
        search(run, tmp_path / name, log=lambda m: None)

    def by_network(path):  # the module path writes a generation in its prefix-sharing order
        return sorted(without_times(path.read_text()), key=lambda r: (r["generation"], r["canonical"]))

    loop = by_network(tmp_path / "loop" / "history.jsonl")
    assert loop == by_network(tmp_path / "fused" / "history.jsonl") == by_network(tmp_path / "grouped" / "history.jsonl")


def test_the_grouped_layout_is_refused_where_an_op_has_no_grouped_form(tiny_kb, tiny_dataset, monkeypatch):
    from modulenet_jax import grouped
    from modulenet_jax.errors import UserError

    monkeypatch.setattr(grouped, "GROUPED_OPS", grouped.GROUPED_OPS - {"cifar_resnet.stem"})
    with pytest.raises(UserError, match=r"evaluator.grouped_layout=True: no grouped form of \['cifar_resnet.stem'\]"):
        small_run(tiny_kb, tiny_dataset, ["evaluator.strategy='fused'", "evaluator.grouped_layout=True"])


def test_the_group_width_packs_the_grouped_layout_only(tiny_kb, tiny_dataset):
    from modulenet_jax.errors import UserError

    fused = ["evaluator.strategy='fused'", "evaluator.group_width=64"]
    assert small_run(tiny_kb, tiny_dataset, fused + ["evaluator.grouped_layout=True"]).population.grouped_layout == 64
    with pytest.raises(UserError, match="set evaluator.grouped_layout=True too, or evaluator.group_width=0"):
        small_run(tiny_kb, tiny_dataset, fused)


def test_dominated_by_names_the_sources_at_most_as_large_and_at_least_as_accurate():
    from modulenet_jax.search.runner import dominated_by

    sources = [{"name": "small", "params": 100, "final_accuracy": 0.8},
               {"name": "large", "params": 300, "final_accuracy": 0.9}]
    row = lambda params, acc: {"params": params, "final_accuracy": acc}  # noqa: E731
    assert dominated_by(row(200, 0.85), sources) == []          # beats the one smaller source
    assert dominated_by(row(200, 0.80), sources) == ["small"]   # as accurate, larger
    assert dominated_by(row(100, 0.80), sources) == []          # the source itself: not dominated
    assert dominated_by(row(400, 0.85), sources) == ["large"]
    assert dominated_by(row(50, 0.1), sources) == []            # smaller than every source


def test_the_front_is_taken_on_the_searchs_objectives():
    """Two networks, one cheaper in parameters and the other in FLOPs: on (error, flops) both
    are on the front, on (error, params) only the more accurate smaller one."""
    from modulenet_jax.search.runner import front_records

    rows = [{"error": 0.1, "params": 100, "flops": 900, "seconds": 1.0},
            {"error": 0.2, "params": 200, "flops": 100, "seconds": 1.0}]
    assert [r["params"] for r in front_records(rows, ("error", "flops"))] == [100, 200]
    assert front_records(rows, ("error", "params")) == [{"error": 0.1, "params": 100, "flops": 900}]


def test_the_final_table_judges_found_networks_on_the_searchs_own_costs():
    """A search on (error, params, flops) or (error, flops): a found network larger than a source
    but with fewer FLOPs is not dominated by it, and beats it only where it is cheaper in every
    cost the search minimised; the table says which costs."""
    from modulenet_jax.search.runner import beats, cost_objectives, dominated_by, markdown_table

    assert cost_objectives(("error", "params")) == ("params",)
    assert cost_objectives(("error", "params", "flops")) == ("params", "flops")
    assert cost_objectives(("error",)) == ("params",)
    source = {"name": "r20", "kind": "source", "params": 270_000, "flops": 81e6, "final_accuracy": 0.80}
    found = {"name": "front0", "kind": "found", "params": 300_000, "flops": 60e6, "final_accuracy": 0.80}
    assert dominated_by(found, [source]) == ["r20"]  # on parameters alone
    assert dominated_by(found, [source], ("params", "flops")) == []
    assert dominated_by(found, [source], ("flops",)) == []
    better = {**found, "final_accuracy": 0.81}
    assert beats(better, [source], ("flops",)) == ["r20"] and beats(better, [source], ("params", "flops")) == []
    rows = [{**r, "junctions": 0, "val_accuracy": 0.8, "final_correct": 80, "final_total": 100,
             "published_final_accuracy": None} for r in (source, better)]
    md = markdown_table(rows, "test", ("flops",))
    assert "| front0 | 300,000 | 60.0 | 0 | 0.8000 | 0.8100 (80/100) |  | r20 |" in md
    assert "in accuracy and FLOPs" in md and ": front0." in md


def test_as_accurate_is_not_beating():
    from modulenet_jax.search.runner import beats
    src = {"name": "s", "params": 100, "flops": 10, "final_accuracy": 0.8}
    assert beats({"params": 50, "flops": 5, "final_accuracy": 0.8}, [src]) == []
    assert beats({"params": 100, "flops": 10, "final_accuracy": 0.81}, [src]) == ["s"]
    assert beats({"params": 101, "flops": 10, "final_accuracy": 0.9}, [src]) == []


def test_the_final_tables_published_accuracy_is_at_the_protocols_input_size(tiny_dataset, tmp_path, monkeypatch):
    from modulenet_jax.search import runner
    kb = KnowledgeBase.build(random_models(), input_size=40)
    run = small_run(kb, tiny_dataset, ["protocol.input_size=40"])
    seen = []
    real = runner.evaluate_published
    monkeypatch.setattr(runner, "evaluate_published",
                        lambda *a, **k: seen.append(k.get("input_size")) or real(*a, **k))
    arch = Architecture.of_source(kb, "cifar_resnet8")  # found again, but not on the joint front given
    found = {"modules": list(arch.modules), "architecture": arch.describe(), "accuracy": 0.5}
    rows = runner.final_table(run, {"front": [], "found_front": [found]}, tmp_path)
    assert seen == [40, 40]  # R1
    assert [r["name"] for r in rows] == ["cifar_resnet8", "front0", "cifar_resnet14"]  # R5: by parameters
    assert not any(r["on_front"] for r in rows)  # R6
