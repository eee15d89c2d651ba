"""The stitch-tuning benchmark's arithmetic on known rows (its runs take the real data: see its docstring)."""

import argparse

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
