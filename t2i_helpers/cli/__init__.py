"""The command line (``python -m t2i_helpers``) and the drivers behind it: benchmarks, model comparison,
the cpu-tier curve and ``make demo``. Notebooks do not import this package."""
from t2i_helpers.cli.commands import main

__all__ = ["main"]
