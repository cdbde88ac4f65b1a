"""Moved to ``steer.wrapping.step``; this name stays for code that imports it (``benchmarks/overhead.py``).
It is the same module object, so patching an attribute here patches ``steer.wrapping.step``."""
import importlib
import sys

sys.modules[__name__] = importlib.import_module("steer.wrapping.step")
