"""``python -m t2i_helpers figures`` (docs/figures.md): captions, tables, the index, vector PDFs, errors.

The unit tests take seconds. The one slow test runs the command over every notebook in the smoke tier
(about 4 minutes on 2 cores), then reruns notebook 06 (three tables) and compares its tables byte for byte.
"""
from __future__ import annotations

import ast
import json
import re
import zlib
from pathlib import Path

import matplotlib.pyplot as plt
import nbformat
import numpy as np
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from t2i_helpers.cli import main
from t2i_helpers.cli.figures import index_markdown, notebooks_folder, read_sidecars, write_index
from t2i_helpers.errors import T2IError
from t2i_helpers.viz import latex_escape, mean_with_ci, save_figure, save_table, share_with_ci, table_cells

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
COURSE = NOTEBOOKS
RERUN = "06"  # the second run: the quickest notebook that writes tables (three of them), to keep CI short


# ------------------------------------------------------------------ what the notebooks call
def calls(path: Path, function: str) -> list[ast.Call]:
    """Every call of ``function`` in the code cells of a notebook (IPython magics left out)."""
    found = []
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type == "code":
            source = "\n".join(l for l in cell.source.splitlines() if not l.lstrip().startswith(("%", "!")))
            found += [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Call)
                      and getattr(n.func, "id", getattr(n.func, "attr", None)) == function]
    return found


def saved_names(paths: list[Path], function: str) -> set[str]:
    return {c.args[1].value for p in paths for c in calls(p, function)
            if len(c.args) > 1 and isinstance(c.args[1], ast.Constant)}


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
def pdf_streams(data: bytes) -> list[tuple[bytes, bytes]]:
    """(dictionary, decoded content) of every stream object of a PDF (Flate-decoded where compressed)."""
    out = []
    for match in re.finditer(rb"<<(.*?)>>\s*stream\r?\n", data, re.S):
        start = match.end()
        end = data.index(b"endstream", start)
        body = data[start:end]
        if b"/FlateDecode" in match.group(1):
            try:
                body = zlib.decompressobj().decompress(body)
            except zlib.error:
                body = b""
        out.append((match.group(1), body))
    return out


def vector_problems(path: Path) -> list[str]:
    """Why a PDF is not a vector figure: no text drawn as text, no embedded font, or an image over most of the page."""
    data = path.read_bytes()
    box = re.search(rb"/MediaBox\s*\[\s*([\d.\-]+)\s+([\d.\-]+)\s+([\d.\-]+)\s+([\d.\-]+)\s*\]", data)
    if not box:
        return ["no /MediaBox"]
    x0, y0, x1, y1 = map(float, box.groups())
    page = (x1 - x0) * (y1 - y0)
    streams = pdf_streams(data)
    content = b"\n".join(body for head, body in streams if b"/Subtype" not in head)
    problems = []
    if not re.search(rb"BT\b.*?(Tj|TJ)\b.*?ET\b", content, re.S):
        problems.append("no text drawn as text (BT ... Tj ... ET)")
    if b"/FontFile2" not in data and b"/FontFile" not in data:
        problems.append("no embedded font")
    for m in re.finditer(rb"([\d.\-]+) 0 0 ([\d.\-]+) [\d.\-]+ [\d.\-]+ cm\s*/(\w+) Do", content):
        width, height = abs(float(m.group(1))), abs(float(m.group(2)))
        if width * height > 0.75 * page:  # the largest in the notebooks: 43% (a heatmap with its labels)
            problems.append(f"image /{m.group(3).decode()} covers {width * height / page:.0%} of the page")
    return problems


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
def run_command(out: Path, prefixes: list[str]) -> None:
    assert main(["figures", "--tier", "smoke", "--out", str(out), "--notebooks", *prefixes]) == 0


@pytest.mark.slow  # every course notebook in the smoke tier, then notebook 06 again: minutes
def test_the_command_makes_every_figure_and_reproduces_the_tables(tmp_path, monkeypatch):
    # The data folder is the test session's (conftest: Shapes, caches and judges made once); each run
    # gets run folders of its own, so the second one trains again instead of loading the first's runs.
    first, second = tmp_path / "first", tmp_path / "second"
    monkeypatch.setenv("T2I_RUNS", str(tmp_path / "runs-first"))
    run_command(first, [p.name[:2] for p in COURSE])
    index = (first / "INDEX.md").read_text()
    for name in sorted(saved_names(COURSE, "save_figure")):
        assert (first / f"{name}.png").stat().st_size > 0, name
        assert vector_problems(first / f"{name}.pdf") == [], name
        assert re.search(rf"^\| `{name}` \| [^|]+\S \| \d\d_\w+ \| smoke \|", index, re.M), name
    tables = sorted(saved_names(COURSE, "save_table"))
    assert all(f"| `{name}` |" in index for name in tables)
    monkeypatch.setenv("T2I_RUNS", str(tmp_path / "runs-second"))
    run_command(second, [RERUN])
    rerun = sorted(saved_names([p for p in COURSE if p.name.startswith(RERUN)], "save_table"))
    assert len(rerun) >= 3
    for name in rerun:
        for suffix in (".md", ".tex"):
            assert (second / f"{name}{suffix}").read_bytes() == (first / f"{name}{suffix}").read_bytes(), name + suffix
