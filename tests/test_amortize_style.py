"""A smoke slice of benchmarks/amortize_style.py (the style task and DiffusionNFT): main() in a tiny
configuration — 2 training and 1 held-out caption, 1 seed, a 3-step chain, 2 training steps — checks the
table, the reward-vs-samples curve, that a cached LoRA is reloaded, and the relational mode's metric.
The numbers of such a run mean nothing; the benchmark itself is run by hand (benchmarks/README.md)."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SMOKE = ["--train-captions", "2", "--heldout", "1", "--seeds", "1", "--steps", "3", "--train-steps", "2",
         "--particles", "2", "--nft-steps", "2", "--grpo-steps", "1", "--group", "2", "--prompts-per-step", "1",
         "--chunk", "4"]


@pytest.fixture(scope="module")
def style():
    spec = importlib.util.spec_from_file_location("amortize_style_benchmark", BENCHMARKS / "amortize_style.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_style_rows_table_curve_and_reload(tmp_path, style):
    cache = tmp_path / "cells"
    report = style.main([*SMOKE, "--rows", "base,fk,nft", "--cache", str(cache)])
    assert report.count("| nft |") == 3 and "share of FK's chroma gain kept" in report  # two sets + training
    training = json.loads((cache / "nft" / "training.json").read_text())
    assert [x for x, _ in training["curve"]] == [2, 4] and training["samples"] == 4
    lora = (cache / "nft" / "run" / "lora")
    before = sorted(p.stat().st_mtime_ns for p in lora.iterdir())
    (cache / "nft" / "train.json").unlink()  # an evaluation cell lost: re-evaluated from the cached LoRA
    style.main([*SMOKE, "--rows", "nft", "--cache", str(cache)])
    assert sorted(p.stat().st_mtime_ns for p in lora.iterdir()) == before and (cache / "nft" / "train.json").exists()


def test_relational_mode_takes_the_share_on_checker_accuracy(tmp_path, style):
    report = style.main([*SMOKE, "--rows", "base,fk", "--reward", "shapes-check", "--teacher-reward",
                         "shapes-clip", "--metric", "correct", "--cache", str(tmp_path / "rel")])
    assert "share of FK's correct gain kept" in report
    with pytest.raises(SystemExit, match="other settings"):  # a style run into the relational cache
        style.main([*SMOKE, "--rows", "base", "--cache", str(tmp_path / "rel")])
