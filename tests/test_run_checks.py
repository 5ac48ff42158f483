"""tools/run_checks.py, what `make test` runs: targets a few at a time, each log whole, the worst status."""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("run_checks", ROOT / "tools" / "run_checks.py")
run_checks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_checks)

MAKEFILE = """\
slow:
\t@echo "slow $$OMP_NUM_THREADS start" >> order.txt; sleep 1; echo "slow output"; echo "slow end" >> order.txt
failing:
\t@echo "failing start" >> order.txt; echo "failing output"; exit 3
fast:
\t@echo "fast start" >> order.txt; echo "fast output"
"""


def test_two_lanes_run_side_by_side_print_every_log_and_return_the_worst_status(tmp_path, capsys):
    (tmp_path / "Makefile").write_text(MAKEFILE)
    assert run_checks.run(["slow", "failing", "fast"], jobs=2, root=tmp_path) == 2  # make exits 2 when a recipe fails
    out = capsys.readouterr().out
    for name, status in (("slow", 0), ("failing", 2), ("fast", 0)):
        assert f"==== {name}: exit status {status} after" in out and f"{name} output" in out
    order = (tmp_path / "order.txt").read_text().splitlines()
    assert "slow 1 start" in order  # one thread each
    assert order.index("failing start") < order.index("slow end")  # the second lane did not wait
    assert (tmp_path / "outputs").is_dir()


def test_one_lane_runs_the_targets_one_after_another(tmp_path, capsys):
    (tmp_path / "Makefile").write_text(MAKEFILE)
    assert run_checks.run(["slow", "fast"], jobs=1, root=tmp_path) == 0
    assert (tmp_path / "order.txt").read_text().splitlines() == ["slow 1 start", "slow end", "fast start"]
