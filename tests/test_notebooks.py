"""tests of the classroom notebooks in notebooks/. each notebook is written as NAME.py, in jupytext's "percent"
format, and committed as NAME.ipynb with its outputs; each ends with a cell that asserts what it taught, so
running it top to bottom is the test. `python notebooks/regenerate.py [NAME ...]` rewrites the .ipynb files.

    pytest test_notebooks.py                 # the fast checks, then every notebook run in a fresh kernel
    pytest test_notebooks.py -m "not slow"   # the fast checks only
"""
import os
import re
import sys
import time

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # never wait on the network
import nbformat  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the project's root
sys.path.insert(0, os.path.join(ROOT, "notebooks"))
import regenerate  # noqa: E402

NAMES = regenerate.NOTEBOOKS  # the notebooks/*.py sources, regenerate.py aside


def test_every_notebook_has_a_source_and_every_source_a_notebook():
    """notebooks/*.ipynb and the notebooks/*.py sources name the same notebooks, so none escapes the tests."""
    committed = sorted(f[:-len(".ipynb")] for f in os.listdir(regenerate.HERE) if f.endswith(".ipynb"))
    assert committed == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_holds_its_sources_cells_with_their_outputs(name):
    """same cells, same order, same text as NAME.py; every code cell ran once, in order, without an error;
    the last cell asserts. if this fails: python notebooks/regenerate.py NAME"""
    nb = nbformat.read(os.path.join(regenerate.HERE, name + ".ipynb"), as_version=4)
    source = regenerate.source(name)
    assert [(c.cell_type, c.source) for c in nb.cells] == [(c.cell_type, c.source) for c in source.cells], \
        f"{name}.ipynb is out of date: run python notebooks/regenerate.py {name}"
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code_cells] == list(range(1, len(code_cells) + 1))
    assert not [o for c in code_cells for o in c.outputs if o.output_type == "error"]
    assert nb.cells[-1].cell_type == "code" and "assert " in nb.cells[-1].source
    for cell in nb.cells:  # markdown would show a line indented by 4 spaces as code (a dedent gone wrong)
        if cell.cell_type == "markdown":
            outside_fences = cell.source.split("```")[::2]
            assert not [line for part in outside_fences for line in part.splitlines() if line.startswith("    ")], cell.source[:80]


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_holds_nothing_that_changes_from_run_to_run(name):
    """cell ids follow the cells' order, no cell keeps an execution timestamp, the metadata names no python
    version, and no output prints a run folder's number or a wall time: regenerating twice gives the same bytes."""
    nb = nbformat.read(os.path.join(regenerate.HERE, name + ".ipynb"), as_version=4)
    assert [c.id for c in nb.cells] == [f"cell-{i:02d}" for i in range(len(nb.cells))]
    assert not [c for c in nb.cells if "execution" in c.metadata]
    assert nb.metadata.language_info == {"name": "python"}
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert not re.search(r"run-\d{3}|done in \d+ s|ran in \d+ s", printed)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_top_to_bottom_and_its_assertions_hold(name):
    """a fresh kernel runs every cell of NAME.py with notebooks/ as the working folder; any error or failed
    assert fails the test. each notebook takes about 2 minutes or less on 2 cpu cores."""
    t0 = time.time()
    nb = regenerate.execute(regenerate.source(name), timeout=300)
    print(f"{name}: {time.time() - t0:.0f} s")
    assert "all claims hold" in "".join(o.get("text", "") for o in nb.cells[-1].outputs)
