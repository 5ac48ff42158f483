"""``python -m t2i_helpers figures``: every figure and table of the notebooks, from one command.

It executes the notebooks (in memory: the files on disk are never changed) with the figure folder
pointed at ``--out``, so each figure is exactly what its notebook shows. Each ``save_figure`` and
``save_table`` call with a caption leaves ``<name>.json`` beside its files; ``INDEX.md`` lists them.
docs/figures.md says what is chosen here and how to cite a figure.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

try:  # the notebook extra (pip install 't2i_helpers[notebooks]'); every other command works without it
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
except ImportError:  # pragma: no cover - reported by make_figures in one line
    nbformat = NotebookClient = None
    CellExecutionError = CellTimeoutError = DeadKernelError = RuntimeError

from t2i_helpers.config import PROJECT_ROOT
from t2i_helpers.errors import T2IError
from t2i_helpers.files import atomic_write_text

NOTEBOOK_PATTERN = "[0-9][0-9]_*.ipynb"
CELL_TIMEOUT_S = 3600  # one cell; the cpu tier's longest (notebook 06's flip runs) takes minutes
REPOSITORY_HINT = "pass --notebooks-dir DIR, or clone the repository (the notebooks are not in the pip package)"


def notebooks_folder(given: str | os.PathLike | None = None) -> Path:
    """``given``, else the checkout's ``notebooks/`` beside the package; one line if there is none."""
    folder = Path(given) if given is not None else PROJECT_ROOT / "notebooks"
    if not folder.is_dir() or not any(folder.glob(NOTEBOOK_PATTERN)):
        raise T2IError(f"figures: no notebooks ({NOTEBOOK_PATTERN}) in {folder}: {REPOSITORY_HINT}")
    return folder


def select_notebooks(folder: Path, prefixes: list[str] | None = None) -> list[Path]:
    """Every ``NN_*.ipynb`` of ``folder`` in order, or those whose names start with one of ``prefixes``."""
    found = sorted(folder.glob(NOTEBOOK_PATTERN))
    if not prefixes:
        return found
    unknown = [p for p in prefixes if not any(nb.name.startswith(p) for nb in found)]
    if unknown:
        raise T2IError(f"figures: no notebook in {folder} starts with {', '.join(unknown)} "
                       f"(there are {', '.join(nb.name[:2] for nb in found)})")
    return [nb for nb in found if any(nb.name.startswith(p) for p in prefixes)]


def git_commit(folder: Path) -> str | None:
    """The checkout's commit (``-dirty`` when tracked files differ from it), or None outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=30)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def kernel_env(tier: str, out: Path, work: Path | None, commit: str | None) -> dict[str, str]:
    """The notebooks' environment: the tier, the figure folder, offline, and data/runs under ``work``.

    ``work`` is None where the user set both ``T2I_DATA`` and ``T2I_RUNS`` (they are kept then)."""
    env = {k: v for k, v in os.environ.items() if k not in ("T2I_SMOKE", "T2I_NOTEBOOK", "T2I_COMMIT")}
    env.update(T2I_TIER=tier, T2I_FIGURES=str(out.resolve()), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    if tier == "smoke":
        env["T2I_SMOKE"] = "1"
    if commit:
        env["T2I_COMMIT"] = commit
    for name in ("T2I_DATA", "T2I_RUNS"):
        if work is not None and name not in os.environ:
            env[name] = str(work / name.removeprefix("T2I_").lower())
    return env


def cell_error(notebook: Path, nb: nbformat.NotebookNode, exc: Exception) -> str:
    """One line: the notebook, the failing cell (its number among all cells and its id) and its error."""
    where = "a cell"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
            where = f"cell {i}" + (f" (id {cell['id']})" if cell.get("id") else "")
    if isinstance(exc, CellExecutionError):
        message = f"{exc.ename}: {exc.evalue}"
    else:
        message = f"{type(exc).__name__}: {exc}"
    message = " ".join(message.split())
    return f"figures: {notebook.name}: {where} failed: {message[:400]}"


def run_notebook(notebook: Path, env: dict[str, str], timeout: int = CELL_TIMEOUT_S) -> float:
    """Execute an in-memory copy of ``notebook`` in its own folder; seconds taken. A failure is one line."""
    nb = nbformat.read(notebook, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(notebook.parent)}})
    start = time.perf_counter()
    try:
        client.execute(env={**env, "T2I_NOTEBOOK": notebook.stem}, cwd=str(notebook.parent),
                       stderr=subprocess.DEVNULL)  # the kernel's own warnings; cell errors come back as outputs
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as exc:
        raise T2IError(cell_error(notebook, nb, exc)) from None
    return time.perf_counter() - start


def read_sidecars(out: Path) -> list[dict]:
    """Every figure and table record (``<name>.json`` with a ``kind``) in ``out``, sorted by name."""
    records = []
    for path in sorted(out.glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(record, dict) and record.get("kind") in ("figure", "table") and record.get("name") == path.stem:
            records.append(record)
    return sorted(records, key=lambda r: r["name"])


def short_commit(commit: str | None) -> str:
    """The first 12 digits of a commit, keeping its ``-dirty`` mark."""
    if not commit:
        return "-"
    return commit.split("-")[0][:12] + ("-dirty" if commit.endswith("-dirty") else "")


def index_markdown(records: list[dict]) -> str:
    """INDEX.md: one table of the figures, one of the tables (with their protocols), and where they came from."""
    cell = lambda text: str(text or "-").replace("|", "\\|")  # noqa: E731
    lines = ["# Figures and tables", "",
             "Written by `python -m t2i_helpers figures` (docs/figures.md says how to cite one). Each row: the stable",
             "name, its one-line caption, the notebook that made it, the tier and the commit it was made at.", ""]
    figures = [r for r in records if r["kind"] == "figure"]
    tables = [r for r in records if r["kind"] == "table"]
    lines += [f"## Figures ({len(figures)})", "", "| name | caption | notebook | tier | commit | files |",
              "|---|---|---|---|---|---|"]
    lines += [f"| `{r['name']}` | {cell(r['caption'])} | {cell(r.get('notebook'))} | {cell(r.get('tier'))} | "
              f"{short_commit(r.get('commit'))} | {', '.join(r['files'])} |" for r in figures]
    lines += ["", f"## Tables ({len(tables)})", "", "| name | caption | protocol | notebook | tier | commit | files |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| `{r['name']}` | {cell(r['caption'])} | {cell(r.get('protocol'))} | {cell(r.get('notebook'))} | "
              f"{cell(r.get('tier'))} | {short_commit(r.get('commit'))} | {', '.join(r['files'])} |"
              for r in tables]
    return "\n".join(lines) + "\n"


def write_index(out: Path) -> tuple[Path, list[dict]]:
    records = read_sidecars(out)
    return atomic_write_text(out / "INDEX.md", index_markdown(records)), records


@contextmanager
def work_folder(keep: bool) -> Iterator[Path | None]:
    """A temp folder for data and runs (None if the user set both T2I_DATA and T2I_RUNS); removed on success."""
    if "T2I_DATA" in os.environ and "T2I_RUNS" in os.environ:
        yield None
        return
    work = Path(tempfile.mkdtemp(prefix="t2i-figures-"))
    try:
        yield work
    except BaseException:
        print(f"figures: data and runs kept in {work}", flush=True)
        raise
    if keep:
        print(f"figures: data and runs kept in {work}", flush=True)
    else:
        shutil.rmtree(work, ignore_errors=True)


def make_figures(tier: str, out: Path, prefixes: list[str] | None = None, notebooks_dir: Path | None = None,
                 keep: bool = False) -> Path:
    """Run the notebooks, then write INDEX.md; returns its path. A failing notebook stops the run
    (one line, T2IError) after the index of what was written so far."""
    if NotebookClient is None:
        raise T2IError("figures: needs nbclient, nbformat and ipykernel: pip install 't2i_helpers[notebooks]'")
    notebooks = select_notebooks(notebooks_folder(notebooks_dir), prefixes)
    out.mkdir(parents=True, exist_ok=True)
    commit = git_commit(notebooks[0].parent)
    start = time.perf_counter()
    print(f"figures: {len(notebooks)} notebooks, tier {tier}, into {out}", flush=True)
    with work_folder(keep) as work:
        env = kernel_env(tier, out, work, commit)
        try:
            for notebook in notebooks:
                seconds = run_notebook(notebook, env)
                print(f"  {notebook.name:34s} {seconds:7.1f} s", flush=True)
        finally:
            index, records = write_index(out)
    figures = sum(r["kind"] == "figure" for r in records)
    print(f"figures: {figures} figures and {len(records) - figures} tables in {time.perf_counter() - start:.0f} s; "
          f"index: {index}", flush=True)
    return index
