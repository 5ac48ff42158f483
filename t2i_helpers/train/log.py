"""``metrics.csv``: one row per logged step, written as the run goes, cut back on a resume."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from t2i_helpers.files import atomic_write_text
from t2i_helpers.train.config import METRICS


class MetricsLog:
    """``metrics.csv``: one row per logged step; columns fixed by the first row."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        self.fields: list[str] | None = None
        if resume_step is not None and path.exists():
            # Drop rows logged after the checkpoint we resume from (the killed run went further).
            with path.open(newline="") as f:
                rows = list(csv.DictReader(f))
            whole = [r for r in rows if None not in r.values() and None not in r and _is_int(r.get("step"))]
            if len(whole) < len(rows):  # a kill while a row was written leaves it cut off
                print(f"note: dropped {len(rows) - len(whole)} incomplete row(s) at the end of {path}", flush=True)
            kept = [r for r in whole if int(r["step"]) <= resume_step]
            if rows:
                self.fields = list(rows[0].keys())
                buf = [",".join(self.fields)] + [",".join(r[k] for k in self.fields) for r in kept]
                atomic_write_text(path, "\n".join(buf) + "\n")
        elif path.exists():
            path.unlink()

    def write(self, row: dict[str, float]) -> None:
        if self.fields is None:
            self.fields = list(row.keys())
            with self.path.open("w", newline="") as f:
                csv.writer(f).writerow(self.fields)
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([_fmt(row.get(k, "")) for k in self.fields])


def _is_int(text: Any) -> bool:
    return isinstance(text, str) and text.isdigit()


def _fmt(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def read_metrics(run_dir: str | Path) -> dict[str, list[float]]:
    """``metrics.csv`` of a run folder (or a CSV file itself) as columns of floats (for loss curves)."""
    path = Path(run_dir) if str(run_dir).endswith(".csv") else Path(run_dir) / METRICS
    with path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if None not in r.values()]  # a row cut off by a kill is left out
    return {k: [float(r[k]) for r in rows if r[k] != ""] for k in (rows[0].keys() if rows else [])}
