"""``import _paths`` at the top of a benchmark puts the repository root on ``sys.path``, so the
benchmark can import the test fixtures (``tests.fixtures``: tiny pipelines, tiny rewards, the grey
world), which are not part of the library. Run the benchmarks as ``python benchmarks/NAME.py``."""
import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
