"""The notebooks' structure: the repository URL defined once, the Colab badge and install cell using it,
and the marks of the notebook-check rule (docs/notebooks.md) used as the rule says."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CHECK = "# NBVAL_CHECK_OUTPUT"


def repository_url() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]


def cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def source(cell: dict) -> str:
    return "".join(cell["source"])


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 6, [p.name for p in NOTEBOOKS]


def test_repository_url_is_a_github_repository():
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", repository_url()), repository_url()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_badge_opens_this_notebook_from_the_repository(path):
    github_path = repository_url().removeprefix("https://github.com/")
    expected = f"https://colab.research.google.com/github/{github_path}/blob/main/notebooks/{path.name}"
    first = source(cells(path)[0])
    links = re.findall(r"\]\((https://colab\.research\.google\.com/github/[^)]+)\)", first)
    assert links == [expected], f"{path.name}: the first cell's badge should link {expected}, it links {links}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_install_cell_installs_from_the_repository(path):
    install = source(cells(path)[1])
    assert cells(path)[1]["cell_type"] == "code"
    urls = re.findall(r"git\+(https://[^\"' ]+)", install)
    assert urls == [repository_url()], f"{path.name}: the install cell installs {urls}, not {repository_url()}"
    assert "import t2i_helpers" in install.split("except")[0], "the install cell should do nothing where the package imports"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_compared_cells_follow_the_rule(path):
    """A compared cell has stored text to compare, is not also marked ignored, and checks no timing."""
    code = [c for c in cells(path) if c["cell_type"] == "code"]
    compared = [c for c in code if CHECK in source(c)]
    assert compared, f"{path.name}: no cell is compared exactly; mark the deterministic ones ({CHECK})"
    for cell in compared:
        text = source(cell)
        first_line = text.splitlines()[0]
        assert first_line == CHECK, f"{path.name}: put {CHECK} on the first line of:\n{text[:200]}"
        assert "NBVAL_IGNORE_OUTPUT" not in text
        assert not re.search(r"perf_counter|time\.time|get_num_threads", text), (
            f"{path.name}: a compared cell must not depend on time or threads:\n{text[:200]}")
        streams = [o for o in cell.get("outputs", []) if o.get("output_type") == "stream"]
        assert streams, f"{path.name}: a compared cell with no stored text output:\n{text[:200]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_outputs_hold_no_error(path):
    for cell in cells(path):
        for output in cell.get("outputs", []):
            assert output.get("output_type") != "error", f"{path.name}: a stored error in:\n{source(cell)[:200]}"
        assert "execution" not in cell.get("metadata", {}), f"{path.name}: timing metadata (store with tools/check_notebooks.py store)"


def _tiny_notebook(path: Path, marked_output: str, unmarked_output: str) -> Path:
    def cell(code: str, text: str) -> dict:
        return {"cell_type": "code", "execution_count": 1, "metadata": {}, "source": code,
                "outputs": [{"output_type": "stream", "name": "stdout", "text": text}]}

    notebook = {"cells": [cell(f"{CHECK}\nprint(2 + 2)", marked_output), cell("print(0.1 + 0.2)", unmarked_output)],
                "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
                "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(notebook))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("marked, unmarked, passes", [("4\n", "anything\n", True), ("5\n", "0.30000000000000004\n", False)])
def test_lax_mode_compares_only_marked_cells(tmp_path, marked, unmarked, passes):
    """The mechanism behind the rule: a marked cell's text must match, an unmarked one's need not."""
    import subprocess

    path = _tiny_notebook(tmp_path / "tiny.ipynb", marked, unmarked)
    result = subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "-q",
                             "-p", "no:cacheprovider", str(path)], capture_output=True, text=True, cwd=tmp_path)
    assert (result.returncode == 0) == passes, result.stdout[-2000:]


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p.name[:2] in ("03", "04", "05", "06", "07", "08")], ids=lambda p: p.name)
def test_notebooks_03_to_07_show_a_cpu_tier_run(path):
    """Their stored outputs come from the cpu tier (real samples of the shipped checkpoints), not smoke."""
    printed = [o.get("text", "") for c in cells(path) if "print(f\"tier: {tier()}\")" in source(c)
               for o in c.get("outputs", [])]
    assert printed and "".join(printed[0]).strip() == "tier: cpu", printed
    if path.name.startswith("07"):  # the studio only samples the shipped checkpoints: nothing to retrain
        assert any("Studio.from_shipped(" in source(c) for c in cells(path))
        return
    loads = [c for c in cells(path) if "load_or_train(" in source(c) or "load_or_train_captioner(" in source(c)]
    assert loads and any("RETRAIN = False" in source(c) for c in cells(path))  # the one visible switch
