"""Checks of what the notebooks save: every figure they name is there as PNG, vector PDF and caption record.

Used by the notebook check (``tools/check_notebooks.py here``, which executes every notebook with the
figure folder in a temp folder) and by tests/test_figures.py. The names come from the notebooks'
source (``save_figure(fig, "<name>", caption=...)``), read with ``ast``, so a figure a notebook stops
making, or makes without a caption, is caught.
"""
from __future__ import annotations

import ast
import re
import zlib
from pathlib import Path

import nbformat

from t2i_helpers.cli.figures import read_sidecars, write_index


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


def check_figure_folder(out: Path, notebooks: list[Path]) -> list[str]:
    """What is wrong with ``out`` after ``notebooks`` ran with ``T2I_FIGURES=out`` (empty: all is well).

    Every figure they name must be a PNG, a vector PDF and a caption record; every table they name its
    Markdown, LaTeX and record. INDEX.md is (re)written from the records and must list them all.
    """
    problems = []
    figures, tables = saved_names(notebooks, "save_figure"), saved_names(notebooks, "save_table")
    for name in sorted(figures):
        missing = [s for s in (".png", ".pdf", ".json") if not (out / f"{name}{s}").is_file()]
        if missing:
            problems.append(f"{name}: no {', '.join(missing)}")
        elif vector_problems(out / f"{name}.pdf"):
            problems.append(f"{name}.pdf: {'; '.join(vector_problems(out / f'{name}.pdf'))}")
    for name in sorted(tables):
        missing = [s for s in (".md", ".tex", ".json") if not (out / f"{name}{s}").is_file()]
        if missing:
            problems.append(f"{name}: no {', '.join(missing)}")
    if out.is_dir() and read_sidecars(out):
        index = write_index(out)[0].read_text()
        problems += [f"INDEX.md does not list {n}" for n in sorted(figures | tables) if f"`{n}`" not in index]
    return problems
