"""Run every notebook in smoke mode and check it, in one of three settings (``make notebooks`` and CI).

* ``here``: in this checkout, under nbval's lax mode: every cell must run; only cells marked
  ``# NBVAL_CHECK_OUTPUT`` are compared with their stored output (the rule: docs/notebooks.md). Then
  every figure and table the notebooks name must be in the figure folder (what ``figures`` collects).
* ``other-cpu``: the same, with torch, oneDNN and NumPy held to AVX2 kernels and one thread. That
  changes floating-point results the way another CPU does, so a compared cell whose text depends on
  them fails here.
* ``colab``: as on Colab. The package is built and installed non-editable into a throwaway
  environment, and the notebooks run from a folder with no checkout around it (no ../shared, no
  data/, no pyproject.toml). Every cell must run, and the COCO cells must print the one line that
  says what to run.

``make test`` runs the three settings and the unit tests two at a time, one torch thread each
(``tools/run_checks.py``).

``store`` is not a check: it executes the notebooks in place, in smoke mode (or the tier that
``T2I_TIER`` names), to record their outputs, with the same fresh folders and no timing metadata.
Notebooks 03-08 are stored from the cpu tier: ``T2I_TIER=cpu python tools/check_notebooks.py store 03 04 05 06 07 08``.

Each setting starts from empty data, cache, run and figure folders in a temp folder, so leftovers of
``make demo`` or an earlier run change nothing; the folder is removed when the check passes.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# Another CPU, simulated: torch's own kernels and oneDNN's limited to AVX2, NumPy's AVX-512 paths off.
OTHER_CPU = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "NPY_DISABLE_CPU_FEATURES": "AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL AVX512_SPR AVX512F AVX512CD",
    "OMP_NUM_THREADS": "1",
}
# The notebooks that must say in one line what to run where COCO is absent.
NEEDS_COCO = ("01_dataset_exploration", "02_text_encoder")
COCO_HINT = "download-coco"


def smoke_env(tmp: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of one check: smoke mode, offline, and fresh folders under ``tmp``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("T2I_")}
    env.update(T2I_SMOKE="1", MPLBACKEND="Agg", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONUNBUFFERED="1", T2I_DATA=str(tmp / "data"), T2I_RUNS=str(tmp / "runs"),
               T2I_FIGURES=str(tmp / "figures"))
    env.update(extra or {})
    return env


def run_nbval(tmp: Path, extra: dict[str, str] | None = None) -> int:
    """nbval's lax mode over the checkout's notebooks, in the current interpreter's kernel."""
    command = [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "-q",
               "-p", "no:cacheprovider", *map(str, NOTEBOOKS)]
    return subprocess.call(command, cwd=ROOT, env=smoke_env(tmp, extra))


def check_figures(tmp: Path) -> int:
    """After a passing run: every figure and table the notebooks name was saved (PNG, vector PDF and
    caption record; Markdown, LaTeX), and INDEX.md lists them (t2i_helpers.cli.figure_checks)."""
    from t2i_helpers.cli.figure_checks import check_figure_folder, saved_names

    problems = check_figure_folder(tmp / "figures", NOTEBOOKS)
    for problem in problems:
        print(f"notebooks (here): figures: {problem}")
    if not problems:
        made = len(saved_names(NOTEBOOKS, "save_figure")), len(saved_names(NOTEBOOKS, "save_table"))
        print(f"notebooks (here): all {made[0]} figures (PNG + vector PDF) and {made[1]} tables saved, INDEX.md lists them")
    return 1 if problems else 0


def make_throwaway_env(tmp: Path) -> Path:
    """A venv that sees this interpreter's dependencies but holds its own, non-editable t2i_helpers."""
    wheels, venv, source = tmp / "wheel", tmp / "venv", tmp / "source"
    # Built from a copy, so that setuptools' build/ folder is not left in the checkout.
    shutil.copytree(ROOT, source, ignore=lambda folder, names: [
        n for n in names if n.startswith(".") or n == "__pycache__" or n.endswith(".egg-info")
        or (Path(folder) == ROOT and n in ("data", "runs", "figures", "build", "notebooks", "tests", "docs"))])
    subprocess.check_call([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "-w", str(wheels), str(source)], stdout=subprocess.DEVNULL)
    subprocess.check_call([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    site = Path(subprocess.check_output([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    # A plain path line: the dependencies import, but the checkout's editable-install hook (a .pth
    # file in that folder) is not run, so `import t2i_helpers` can only find the copy installed below.
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheel = next(wheels.glob("t2i_helpers-*.whl"))
    with zipfile.ZipFile(wheel) as archive:  # a Colab install must carry the cpu tier's shipped models
        missing = [f"t2i_helpers/checkpoints/cpu/{f}.safetensors" for f in ("baseline", "gan", "diffusion")
                   if f"t2i_helpers/checkpoints/cpu/{f}.safetensors" not in archive.namelist()]
    if missing:
        raise SystemExit(f"the wheel lacks {', '.join(missing)}: see [tool.setuptools.package-data] in pyproject.toml")
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile",
                           "--target", str(site), str(wheel)])
    # The notebooks' kernel is this venv's Python (found before any kernel of the user's, see below).
    spec = venv / "share" / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "throwaway", "language": "python"}))
    return python


def check_colab(tmp: Path) -> int:
    """Run every notebook with the throwaway install, from a folder outside any checkout."""
    python = make_throwaway_env(tmp)
    work = tmp / "colab"
    work.mkdir()
    env = smoke_env(tmp, {"JUPYTER_DATA_DIR": str(tmp / "jupyter")})  # no kernels of the user's
    for name in ("T2I_DATA", "T2I_RUNS", "T2I_FIGURES"):  # as on Colab: beside the notebooks
        env.pop(name)
    found = subprocess.check_output([str(python), "-c", "import t2i_helpers; print(t2i_helpers.__file__)"],
                                    cwd=work, env=env, text=True).strip()
    if not found.startswith(str(tmp)):
        print(f"colab check: t2i_helpers imports from {found}, not from the throwaway install")
        return 1
    failed = []
    for notebook in NOTEBOOKS:
        shutil.copy(notebook, work / notebook.name)
        log = tmp / f"{notebook.stem}.log"
        with open(log, "w") as out:
            done = subprocess.call([str(python), "-m", "nbconvert", "--to", "notebook", "--execute",
                                    "--ExecutePreprocessor.timeout=900", "--ExecutePreprocessor.kernel_name=python3",
                                    "--output", f"executed-{notebook.name}", notebook.name],
                                   cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)
        problem = f"a cell failed (see {log})" if done else missing_coco_line(work / f"executed-{notebook.name}")
        print(f"colab check: {notebook.name}: {problem or 'ran'}", flush=True)
        if problem:
            failed.append(notebook.name)
            print("\n".join(log.read_text().splitlines()[-25:]))
    if any(work.parent.joinpath(p).exists() for p in ("pyproject.toml", "shared")):
        print("colab check: a checkout is visible around the work folder")
        return 1
    return 1 if failed else 0


def missing_coco_line(executed: Path) -> str:
    """'' if the notebook said in one line what to run for COCO (where it needs COCO), else what is wrong."""
    if executed.stem.removeprefix("executed-") not in NEEDS_COCO:
        return ""
    cells = json.loads(executed.read_text())["cells"]
    text = [line for c in cells for o in c.get("outputs", []) if o.get("output_type") == "stream"
            for line in "".join(o["text"]).splitlines()]
    hints = [line for line in text if COCO_HINT in line]
    return "" if hints else f"no line saying what to run for COCO ('{COCO_HINT}')"


def store(tmp: Path, names: list[str] | None = None) -> int:
    """Execute each notebook (or those whose names start with one of ``names``) in place: what
    their stored outputs come from. One temp folder for all, so the caches are built once."""
    env = smoke_env(tmp)
    if os.environ.get("T2I_TIER"):  # a real tier's run instead of smoke mode
        env.pop("T2I_SMOKE")
        env["T2I_TIER"] = os.environ["T2I_TIER"]
    for notebook in NOTEBOOKS:
        if names and not any(notebook.name.startswith(n) for n in names):
            continue
        status = subprocess.call([sys.executable, "-m", "nbconvert", "--to", "notebook", "--execute", "--inplace",
                                  "--ExecutePreprocessor.timeout=3600", "--ExecutePreprocessor.record_timing=False",
                                  str(notebook)], cwd=ROOT, env=env)
        if status:
            return status
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("setting", choices=["here", "other-cpu", "colab", "store"])
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    parser.add_argument("names", nargs="*", help="store: only the notebooks whose names start so (e.g. 03 04 05)")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix=f"t2i-notebooks-{args.setting}-"))
    before = {p.name for p in ROOT.iterdir()}
    if args.setting == "colab":
        status = check_colab(tmp)
    elif args.setting == "store":
        status = store(tmp, args.names)
    else:
        status = run_nbval(tmp, OTHER_CPU if args.setting == "other-cpu" else None)
        if status == 0 and args.setting == "here":
            status = check_figures(tmp)
    left = sorted({p.name for p in ROOT.iterdir()} - before)
    if left and args.setting != "store":
        print(f"notebooks ({args.setting}): the check left {', '.join(left)} in the checkout")
        status = status or 1
    if status == 0 and not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        print(f"notebooks ({args.setting}): files kept in {tmp}")
    return status


if __name__ == "__main__":
    sys.exit(main())
