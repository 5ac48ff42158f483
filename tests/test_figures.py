"""``python -m t2i_helpers figures`` (docs/figures.md): captions, tables, the index, vector PDFs, errors.

The unit tests take seconds. The slow one runs the command over notebook 06 twice in the smoke tier and
compares its tables byte for byte; that every notebook's figures are made is checked by the notebook
check, which executes them all anyway (tools/check_notebooks.py here).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib.pyplot as plt
import nbformat
import numpy as np
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from t2i_helpers.cli import main
from t2i_helpers.cli.figure_checks import calls, check_figure_folder, saved_names, vector_problems
from t2i_helpers.cli.figures import index_markdown, notebooks_folder, read_sidecars, write_index
from t2i_helpers.errors import T2IError
from t2i_helpers.viz import latex_escape, mean_with_ci, save_figure, save_table, share_with_ci, table_cells

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
COURSE = NOTEBOOKS
RERUN = "08"  # three tables, cheaper in smoke mode than 06 (six, and 18 training runs): run twice, tables byte-identical


# ------------------------------------------------------------------ what the notebooks call
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_every_save_figure_call_has_a_caption(notebook):
    missing = [c.lineno for c in calls(notebook, "save_figure") if not any(k.arg == "caption" for k in c.keywords)]
    assert not missing, f"{notebook.name}: save_figure without caption= (lines {missing} of their cells)"


def test_the_notebooks_name_their_figures_and_tables_once():
    figures = [c.args[1].value for p in NOTEBOOKS for c in calls(p, "save_figure")]
    tables = [c.args[1].value for p in NOTEBOOKS for c in calls(p, "save_table")]
    assert len(figures) >= 32 and len(tables) >= 5
    assert len(set(figures + tables)) == len(figures + tables), "a name is used twice: its .json would be overwritten"


# ------------------------------------------------------------------ vector PDFs
def test_vector_check_passes_a_saved_figure_and_fails_a_raster_page(tmp_path):
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1], [1, 0])
    ax.imshow(np.zeros((8, 8, 3), dtype=np.uint8), extent=(0, 0.2, 0, 0.2))
    ax.set_title("a title")
    _, pdf = save_figure(fig, "vector", tmp_path)
    assert vector_problems(pdf) == []
    raster = plt.figure(figsize=(3, 2))
    raster.figimage(np.zeros((400, 600, 3), dtype=np.uint8))  # a screenshot pasted over the whole page
    raster.savefig(tmp_path / "raster.pdf")
    problems = vector_problems(tmp_path / "raster.pdf")
    assert any("no text" in p for p in problems) and any("covers" in p for p in problems), problems
    plt.close("all")


# ------------------------------------------------------------------ captions and the index
def test_save_figure_with_a_caption_writes_its_sidecar(tmp_path, monkeypatch):
    monkeypatch.setenv("T2I_NOTEBOOK", "04_training")
    monkeypatch.setenv("T2I_COMMIT", "abc123")
    monkeypatch.setenv("T2I_TIER", "smoke")
    fig, _ = plt.subplots()
    png, pdf = save_figure(fig, "04_loss", tmp_path, caption="Loss per step.")
    record = json.loads((tmp_path / "04_loss.json").read_text())
    assert record == {"name": "04_loss", "kind": "figure", "caption": "Loss per step.", "protocol": None,
                      "notebook": "04_training", "tier": "smoke", "commit": "abc123", "files": [png.name, pdf.name]}
    save_figure(fig, "no_caption", tmp_path)
    assert not (tmp_path / "no_caption.json").exists() and (tmp_path / "no_caption.pdf").exists()
    with pytest.raises(T2IError, match="one line"):
        save_figure(fig, "two_lines", tmp_path, caption="one\ntwo")
    plt.close("all")


def test_index_lists_figures_and_tables_sorted_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("T2I_TIER", "cpu")
    fig, _ = plt.subplots()
    save_figure(fig, "b_fig", tmp_path, caption="The second | figure.")
    save_figure(fig, "a_fig", tmp_path, caption="The first figure.")
    save_table([{"x": 1}], "c_table", "A table.", "n=1, no seed", tmp_path)
    (tmp_path / "unrelated.json").write_text('{"kind": "something else"}')
    index, records = write_index(tmp_path)
    assert [r["name"] for r in records] == ["a_fig", "b_fig", "c_table"]
    text = index.read_text()
    assert text.index("`a_fig`") < text.index("`b_fig`") < text.index("`c_table`")
    assert "The second \\| figure." in text and "a_fig.png, a_fig.pdf" in text
    assert "| `c_table` | A table. | n=1, no seed |" in text and "unrelated" not in text
    assert index_markdown(read_sidecars(tmp_path)) == text
    plt.close("all")


# ------------------------------------------------------------------ tables
def test_save_table_writes_markdown_and_booktabs_with_intervals(tmp_path):
    rows = [{"model": "gan_v2", **share_with_ci("all", 0.103, 1000), "fid_proxy": 7249.4, "n": 1000},
            {"model": "50% & #1", **share_with_ci("all", 0.5, 10), "fid_proxy": None, "n": 10}]
    md, tex = save_table(rows, "06_demo", "GAN_x & co: 10% of {all}", "1000 captions, seed 0; 95% Clopper-Pearson", tmp_path)
    low, high = rows[0]["all_ci_low"], rows[0]["all_ci_high"]
    assert (round(low, 3), round(high, 3)) == (0.085, 0.124)  # notebook 06's interval for the same share
    markdown = md.read_text()
    assert "| model | all | fid_proxy | n |" in markdown and "all_ci_low" not in markdown
    assert f"| gan_v2 | 0.103 [{low:.3f}, {high:.3f}] | 7249 | 1000 |" in markdown
    assert "| 50% & #1 | 0.500 [0.187, 0.813] | - | 10 |" in markdown
    assert "GAN_x & co: 10% of {all}" in markdown and "Protocol: 1000 captions, seed 0; 95% Clopper-Pearson" in markdown
    latex = tex.read_text()
    for command in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}{lrrr}", r"\label{tab:06_demo}"):
        assert command in latex
    assert r"\caption{GAN\_x \& co: 10\% of \{all\}}" in latex
    assert r"gan\_v2 & 0.103 [0.085, 0.124] & 7249 & 1000 \\" in latex
    assert r"50\% \& \#1 & 0.500 [0.187, 0.813] & - & 10 \\" in latex
    assert r"Protocol: 1000 captions, seed 0; 95\% Clopper-Pearson" in latex
    assert json.loads((tmp_path / "06_demo.json").read_text())["files"] == ["06_demo.md", "06_demo.tex"]


def test_table_conventions_mean_columns_and_escaping():
    assert latex_escape(r"a_b%c&d#e$f{g}h~i^j\k") == (r"a\_b\%c\&d\#e\$f\{g\}h\textasciitilde{}i"
                                                     r"\textasciicircum{}j\textbackslash{}k")
    row = {"model": "m", "realism_mean": 3.0, "realism_ci_low": 2.5, "realism_ci_high": 3.5}  # summarise_ratings' keys
    row |= mean_with_ci("seeds", [0.99, 0.991, 0.993])
    row |= mean_with_ci("one run", [0.5])  # one value: no interval
    columns, cells = table_cells([row])
    assert columns == ["model", "realism_mean", "seeds", "one run"]
    assert cells[0][:2] == ["m", "3.000 [2.500, 3.500]"] and cells[0][3] == "0.500"
    assert re.fullmatch(r"0\.991 \[0\.98\d, 0\.99\d\]", cells[0][2])


# ------------------------------------------------------------------ the command's errors
def test_a_missing_notebooks_folder_is_one_line(tmp_path, capsys):
    assert main(["figures", "--notebooks-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--notebooks-dir" in err and "clone the repository" in err
    assert notebooks_folder() == ROOT / "notebooks"


def test_an_unknown_notebook_prefix_is_one_line(tmp_path, capsys):
    assert main(["figures", "--notebooks", "99", "--out", str(tmp_path)]) == 2
    assert "no notebook" in capsys.readouterr().err and not list(tmp_path.iterdir())


@pytest.mark.slow  # starts a kernel: about 10 s
def test_a_failing_notebook_names_itself_and_its_cell_and_keeps_what_was_written(tmp_path, capsys):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    figure = ("import matplotlib.pyplot as plt\nfrom t2i_helpers.viz import save_figure\n"
              "fig, ax = plt.subplots()\nax.set_title('x')\nsave_figure(fig, '00_first', caption='The first.')")
    nbformat.write(new_notebook(cells=[new_code_cell(figure)]), folder / "00_good.ipynb")
    nbformat.write(new_notebook(cells=[new_code_cell("x = 1"), new_code_cell("raise ValueError('broken\\ndata')")]),
                   folder / "01_bad.ipynb")
    out = tmp_path / "out"
    assert main(["figures", "--tier", "smoke", "--notebooks-dir", str(folder), "--out", str(out)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert err == ["error: figures: 01_bad.ipynb: cell 1 (id " + nbformat.read(folder / "01_bad.ipynb", 4).cells[1].id
                   + ") failed: ValueError: broken data"]
    assert vector_problems(out / "00_first.pdf") == [] and "`00_first`" in (out / "INDEX.md").read_text()
    assert not list(out.glob(".*"))  # no temp files left by the atomic writes


# ------------------------------------------------------------------ end to end
def without_timings(text: str, sep: str) -> str:
    """A table's text without its measured-speed columns (a header cell with "/s", like "train images/s"):
    the one thing in a table that never repeats."""
    drop, width, out = set(), None, []
    for line in text.splitlines():
        cells = line.split(sep)
        if width is None and len(cells) > 2 and any("/s" in c for c in cells):
            drop, width = {i for i, c in enumerate(cells) if "/s" in c}, len(cells)
        out.append(sep.join(c for i, c in enumerate(cells) if i not in drop) if len(cells) == width else line)
    return "\n".join(out)


def test_without_timings_drops_only_the_speed_column():
    md = "| a | b images/s | c |\n|---|---:|---:|\n| x | 12 | 0.5 |\nProtocol: images/s measured"
    assert without_timings(md, "|") == "| a | c |\n|---|---:|\n| x | 0.5 |\nProtocol: images/s measured"
    tex = "a & b images/s & c \\\\\nx & 12 & 0.5 \\\\"
    assert without_timings(tex, "&") == "a & c \\\\\nx & 0.5 \\\\"
    assert without_timings("| a | b |\n| 1 | 2 |", "|") == "| a | b |\n| 1 | 2 |"


def run_command(out: Path, prefixes: list[str]) -> None:
    assert main(["figures", "--tier", "smoke", "--out", str(out), "--notebooks", *prefixes]) == 0


@pytest.mark.slow  # notebook 06 (six tables, five figures) twice in the smoke tier: about two minutes
def test_the_command_makes_a_notebooks_figures_and_reproduces_its_tables(tmp_path, monkeypatch):
    """The command end to end on one notebook, run twice. That every notebook's figures are made is
    checked where every notebook runs anyway: ``tools/check_notebooks.py here`` ends with
    :func:`check_figure_folder` on the figures they saved (so CI does not execute them all twice)."""
    # The data folder is the test session's (conftest: Shapes, caches and judges made once); each run
    # gets run folders of its own, so the second one trains again instead of loading the first's runs.
    first, second = tmp_path / "first", tmp_path / "second"
    notebook = [p for p in COURSE if p.name.startswith(RERUN)]
    monkeypatch.setenv("T2I_RUNS", str(tmp_path / "runs-first"))
    run_command(first, [RERUN])
    assert check_figure_folder(first, notebook) == []
    index = (first / "INDEX.md").read_text()
    for name in sorted(saved_names(notebook, "save_figure")):
        assert re.search(rf"^\| `{name}` \| [^|]+\S \| {notebook[0].stem} \| smoke \|", index, re.M), name
    monkeypatch.setenv("T2I_RUNS", str(tmp_path / "runs-second"))
    run_command(second, [RERUN])
    tables = sorted(saved_names(notebook, "save_table"))
    assert len(tables) >= 3
    for name in tables:  # byte for byte, but for measured speeds (06_closing has a column of them)
        for suffix, sep in ((".md", "|"), (".tex", "&")):
            texts = [without_timings((folder / f"{name}{suffix}").read_text(encoding="utf-8"), sep)
                     for folder in (first, second)]
            assert texts[0] == texts[1], name + suffix


def test_check_figure_folder_names_what_is_missing(tmp_path, monkeypatch):
    nb = new_notebook(cells=[new_code_cell('save_figure(fig, "00_a", caption="A.")\nsave_figure(fig, "00_b", caption="B.")\n'
                                           'save_table(rows, "00_t", caption="T.", protocol="P.")')])
    path = tmp_path / "00_x.ipynb"
    nbformat.write(nb, path)
    out = tmp_path / "out"
    monkeypatch.setenv("T2I_FIGURES", str(out))
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    ax.set_title("a")
    save_figure(fig, "00_a", caption="A.")
    plt.close(fig)
    problems = check_figure_folder(out, [path])
    assert problems == ["00_b: no .png, .pdf, .json", "00_t: no .md, .tex, .json",
                        "INDEX.md does not list 00_b", "INDEX.md does not list 00_t"]
    save_table([{"x": 1}], "00_t", caption="T.", protocol="P.", out_dir=out)
    assert check_figure_folder(out, [path]) == ["00_b: no .png, .pdf, .json", "INDEX.md does not list 00_b"]
