"""benchmarks/memory.py: every cell's method and config run one step (on the tests' tiny SD, in this process),
and the half-precision estimate halves what is above the import baseline except the LoRA's float32 state."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
memory = pytest.importorskip("memory")


def test_every_cell_runs_one_step_and_reports_its_memory():
    for method in memory.CELLS:
        cell = memory.run_cell(method, steps=2, size=512, family="tiny")
        # peak >= model by construction; model vs import is noise on the tiny model (RSS may shrink by pages)
        assert cell["peak"] >= cell["model"] > 0 and cell["import"] > 0
        assert cell["lora_params"] > 0 and cell["seconds"] > 0
    line = memory.table([cell]).splitlines()[-1]
    assert line.startswith(f"| {method} | 2 |") and line.count("|") == 9


def test_half_estimate_keeps_the_lora_state_in_float32():
    gb = memory.GB
    cell = {"import": 1 * gb, "peak": 9 * gb, "lora_params": gb // 16}  # LoRA state = 1 GB
    assert memory.half_estimate(cell) == pytest.approx(1 * gb + 7 * gb / 2 + 1 * gb)
