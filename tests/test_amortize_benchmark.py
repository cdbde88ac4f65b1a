"""A smoke slice of benchmarks/amortize.py (amortizing steering into LoRA on the shapes world): its main()
in a tiny configuration — 2 training and 2 held-out captions, 1 single-object caption, 1 seed, a 3-step
chain, 2 training steps — checks the tables' structure, the cache, resuming cell by cell (a cached
LoRA is reloaded, not retrained, and reproduces its cells) and refusing a cache made with other settings.
The numbers of such a run mean nothing; the benchmark itself is run by hand (benchmarks/README.md)."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
ROWS = ["base", "fk", "distill", "draft", "dpo", "kto"]
TRAINED = ["distill", "draft", "dpo", "kto"]
SMOKE = ["--train-captions", "2", "--heldout", "2", "--singles", "1", "--seeds", "1", "--steps", "3",
         "--teacher-particles", "2", "--distill-steps", "2", "--distill-samples", "1", "--draft-steps", "2",
         "--draft-prompts", "1", "--dpo-steps", "2", "--kto-steps", "2", "--pref-batch", "1",
         "--rows", ",".join(ROWS)]


@pytest.fixture(scope="module")
def amortize():
    """benchmarks/amortize.py as a module (loaded from its file: benchmarks/ is not put on sys.path)."""
    spec = importlib.util.spec_from_file_location("amortize_benchmark", BENCHMARKS / "amortize.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def first_run(amortize, tmp_path_factory):
    cache = tmp_path_factory.mktemp("amortize_cells")
    argv = SMOKE + ["--cache", str(cache), "--threads", str(torch.get_num_threads())]
    return cache, argv, amortize.main(argv)


def test_the_smoke_run_fills_every_cell_of_the_requested_rows(first_run):
    cache, _, out = first_run
    assert out["computed"] == ROWS
    sizes = {"train": 2, "heldout": 2, "single": 1}
    for row in ROWS:
        for name, n in sizes.items():
            cell = out["rows"][row][name]
            assert cell is not None, (row, name)
            assert 0.0 <= cell["ci"][0] <= cell["accuracy"] <= cell["ci"][1] <= 1.0
            assert cell["n"] == n and len(cell["per_caption"]) == n
            assert all(0.0 <= a <= 1.0 for a in cell["per_caption"])
            assert 0.0 <= cell["swap_p"] <= 1.0
            assert cell["nfe"] == (2 * 3 if row == "fk" else 3)  # the teacher at K x S, every other row at 1x
            assert (cache / row / f"{name}.json").is_file()
    for row in ("base", "fk", "grpo-clip"):
        assert out["rows"][row]["training"] is None
    for row in TRAINED:
        t = out["rows"][row]["training"]
        assert t["steps"] == 2 and t["nfe"] > 0 and t["wall_seconds"] > 0 and t["seconds_per_step"] > 0
        assert t["peak_rss_growth_mib"] >= 0 and t["lora_b_norm"] >= 0
        assert t["captions"] == json.loads((cache / "settings.json").read_text())["captions"]["train"]
        assert (cache / row / "run" / "lora" / "pytorch_lora_weights.safetensors").is_file()
        assert not (cache / row / "run" / "checkpoints").exists()
    # distill's training NFE: one FK-2 sample per caption (2 x 3 NFE each) plus one loss forward per kept sample
    assert out["rows"]["distill"]["training"]["nfe"] == 2 * 2 * 3 + 2 * 2
    # DPO: per caption an FK-2 and a base sample, then per step one pair through model and reference;
    # KTO: per caption an FK-2 sample, then per step one sample through model and reference
    assert out["rows"]["dpo"]["training"]["nfe"] == 2 * (2 * 3 + 3) + 2 * 2 * 2
    assert out["rows"]["kto"]["training"]["nfe"] == 2 * 2 * 3 + 2 * 2


def test_the_report_has_both_tables_with_every_row(first_run, amortize):
    _, _, out = first_run
    report = out["report"]
    labels = amortize.labels(amortize.parse(SMOKE))
    main_table, cost_table = report.split("\n\n")
    for row in ROWS:
        assert labels[row] in main_table
    assert "share of teacher's gain kept" in main_table.splitlines()[0]
    assert labels["grpo-clip"] not in report
    assert [line.split(" | ")[0] for line in cost_table.splitlines()[2:]] == \
        [f"| {labels[r]}" for r in TRAINED]  # training costs: the trained rows only
    for line in main_table.splitlines():
        assert line.count("|") == 10
    for line in cost_table.splitlines():
        assert line.count("|") == 12


def test_a_second_run_skips_cached_cells_and_a_lost_cell_reloads_the_lora(first_run, amortize):
    cache, argv, out = first_run
    files = sorted(cache.rglob("*.json"))
    before = {f: f.read_bytes() for f in files}
    again = amortize.main(argv)
    assert again["computed"] == []
    assert {f: f.read_bytes() for f in sorted(cache.rglob("*.json"))} == before
    lost = cache / "distill" / "heldout.json"
    old = json.loads(lost.read_text())
    lost.unlink()
    third = amortize.main(argv)
    assert third["computed"] == ["distill"]
    assert (cache / "distill" / "training.json").read_bytes() == before[cache / "distill" / "training.json"]
    new = json.loads(lost.read_text())
    for key in ("accuracy", "per_caption", "reward", "swap_p"):  # the reloaded LoRA reproduces the cell
        assert new[key] == pytest.approx(old[key], abs=1e-5)
    printed = amortize.main(argv + ["--report-only"])
    assert printed["computed"] == [] and printed["report"] == out["report"]


def test_a_cache_made_with_other_settings_is_refused(first_run, amortize):
    _, argv, _ = first_run
    with pytest.raises(SystemExit, match="other settings"):
        amortize.main(argv + ["--seeds", "2"])
    with pytest.raises(SystemExit, match="trained with other settings"):
        amortize.main(argv + ["--draft-lr", "0.5"])


def test_training_captions_are_a_fixed_prefix_stable_subset_of_the_train_split(amortize):
    from steer.zoo.shapes import world

    full = amortize.train_captions(32)
    assert amortize.train_captions(8) == full[:8] and len(set(full)) == 32
    assert set(full) <= set(world.split_captions("train")["relation"])
    assert not set(full) & world.HELDOUT_CAPTIONS
