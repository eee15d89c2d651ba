"""The stitch-tuning benchmark's arithmetic on known rows (its runs take the real data: see its docstring)."""

import argparse
import re

import pytest

from modulenet_jax.benchmarks.stitch_tuning import parse_setting, summary


def test_a_setting_is_steps_and_a_learning_rate():
    assert parse_setting("2:0.0001") == (2, 1e-4)
    with pytest.raises(argparse.ArgumentTypeError, match="steps:learning_rate like 2:0.0001, got '2'"):
        parse_setting("2")


def test_the_summary_reads_random_networks_against_no_tuning_and_sources_apart():
    rows = [{"kind": "run", "untuned": 0.5, "tuned": 0.4, "finetuned": 0.6},
            {"kind": "block", "untuned": 0.6, "tuned": 0.7, "finetuned": 0.7},
            {"kind": "run", "untuned": 0.7, "tuned": 0.7, "finetuned": 0.5},
            {"kind": "source", "untuned": 0.8, "tuned": 0.9, "finetuned": 0.8}]
    s = summary(rows, "tuned")
    assert s["networks"] == 3 and s["lowered"] == 1 and s["raised"] == 1
    assert s["mean_change"] == pytest.approx(0.0)
    assert s["source_change"] == [pytest.approx(0.1)]
    # fine-tuned order: 2 < 0 < 1; untuned ranks 0 < 1 < 2 (tau -1/3), tuned 0 < 1 = 2 (a tie)
    assert s["tau_untuned"] == pytest.approx(-1 / 3)
    assert s["tau"] == pytest.approx(0.0)


def test_a_diagnostic_setting_names_its_optimizer():
    from modulenet_jax.benchmarks.stitch_tuning_losses import parse_setting as parse

    assert parse("sgd:2:0.001") == ("sgd", 2, 1e-3)
    with pytest.raises(argparse.ArgumentTypeError, match="optimizer adam or sgd, like adam:2:0.0001, got 'rms:2:1'"):
        parse("rms:2:1")


def test_the_diagnostic_summary_reads_random_networks_against_the_first_setting():
    from modulenet_jax.benchmarks.stitch_tuning_losses import summary as diagnostic_summary

    rows = [{"kind": "run", "finetuned": 0.6}, {"kind": "source", "finetuned": 0.9},
            {"kind": "block", "finetuned": 0.7}]
    lines = diagnostic_summary(rows, {"adam:0:0": [50, 90, 60], "adam:2:0.001": [40, 95, 70]}, 100)
    assert lines[0] == "adam:0:0: mean 55.00% over 2 random networks, change +0.00 points (0 lowered / 0 raised), tau 1.000"
    assert lines[1] == ("adam:2:0.001: mean 55.00% over 2 random networks, change +0.00 points (1 lowered / 1 raised), "
                        "tau 1.000")


@pytest.mark.parametrize("write, message", [
    (None, "No such file or directory"),
    ("not json", "is not JSON"),
    ("[1, 2]", "is not a fidelity report (no base_protocol, val and rows)"),
])
def test_a_benchmark_script_says_a_wrong_report_in_one_line_with_status_2(tmp_path, capsys, write, message):
    """The benchmarks run as `python -m` treat bad input as the `modulenet` command does
    (`errors.run_script`): one line naming the problem, status 2; `--debug` keeps the traceback."""
    from modulenet_jax.benchmarks import stitch_tuning, stitch_tuning_losses
    from modulenet_jax.errors import UserError

    report = tmp_path / "report.json"
    if write is not None:
        report.write_text(write)
    for script in (stitch_tuning, stitch_tuning_losses):
        with pytest.raises(SystemExit) as exit_:
            script.main(["--report", str(report), "--set", "data.source=/nowhere"])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err
        assert f": error: --report {report} " in err if write else ": error: [Errno 2]" in err
        with pytest.raises(UserError if write else FileNotFoundError, match=re.escape(message)):
            script.main(["--report", str(report), "--debug"])


def test_the_device_script_says_what_it_needs_in_one_line(tmp_path, capsys):
    from modulenet_jax.benchmarks import speed_session

    with pytest.raises(SystemExit) as exit_:
        speed_session.main(["--out", str(tmp_path)])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.endswith(": error: --kb and --data are required (or --merge)\n")
