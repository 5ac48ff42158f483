"""Run make targets a few at a time, each with one torch thread, and print each one's log whole when it ends.

    python tools/run_checks.py --jobs 2 unit notebooks-colab notebooks notebooks-other-cpu

``make test`` uses it. On 2 cores the four checks used to run one after another (the unit tests,
then the notebooks here, then the other-CPU and Colab settings side by side): about 21 minutes.
Most of their time is spent in one thread anyway (kernel starts, imports, smoke-sized tensors), so
two lanes of one thread each finish the same work in less time. The targets start in the order
given, each as soon as a lane is free: put the longest first. The exit status is the worst one.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def start(target: str, logs: Path, root: Path) -> tuple[subprocess.Popen, Path, float]:
    log = logs / f"{target}.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(log, "w") as out:
        job = subprocess.Popen(["make", "--no-print-directory", target], cwd=root, env=env,
                               stdout=out, stderr=subprocess.STDOUT)
    return job, log, time.monotonic()


def run(targets: list[str], jobs: int, root: Path = ROOT) -> int:
    """Each target of the Makefile in ``root``, at most ``jobs`` at once; the worst exit status."""
    # The browser test writes its screenshot to outputs/; made now, so a notebook check that runs
    # meanwhile does not see it appear in the checkout (it fails on anything a check leaves there).
    (root / "outputs").mkdir(exist_ok=True)
    logs = Path(tempfile.mkdtemp(prefix="t2i-checks-"))
    waiting, running, worst = list(targets), {}, 0
    while waiting or running:
        while waiting and len(running) < jobs:
            name = waiting.pop(0)
            running[name] = start(name, logs, root)
        time.sleep(1)
        for name, (job, log, began) in list(running.items()):
            if job.poll() is None:
                continue
            del running[name]
            worst = max(worst, job.returncode)
            print(f"==== {name}: exit status {job.returncode} after {time.monotonic() - began:.0f} s ====")
            print(log.read_text(errors="replace"), flush=True)
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="how many targets run at once (default 2)")
    parser.add_argument("targets", nargs="+", help="make targets, the longest first")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, not {args.jobs}")
    return run(args.targets, args.jobs)


if __name__ == "__main__":
    sys.exit(main())
