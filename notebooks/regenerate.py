"""
regenerate the classroom notebooks: each NAME.ipynb is written from its source NAME.py (jupytext's
"percent" format), run top to bottom in a fresh kernel with notebooks/ as its working folder, and saved with
its outputs (figures included) so that it can be read on GitHub without running anything.

    python notebooks/regenerate.py                      # every notebook
    python notebooks/regenerate.py 2_losses_by_hand     # one (or several) by name

edit the .py files, never the .ipynb ones. the .ipynb written depends only on the cells and on what they
print: cell ids follow the cells' positions (cell-00, cell-01, ...) and no timestamps are kept, so running
this twice changes nothing. to add a notebook, write NAME.py here (copy another's header) and run this.
"""
import argparse
import os
import time

import jupytext
import nbformat
from nbclient import NotebookClient

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)  # the project: its rddpo.py and harness/ are what the notebooks import
NOTEBOOKS = sorted(f[:-len(".py")] for f in os.listdir(HERE) if f.endswith(".py") and f != "regenerate.py")
TIMEOUT = 300  # seconds per cell


def source(name):
    """the notebook's cells as NAME.py writes them, without outputs; ids and metadata that never change."""
    nb = jupytext.read(os.path.join(HERE, name + ".py"))
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:02d}"  # jupytext draws random ids
    nb.metadata = {"jupytext": {"formats": nb.metadata["jupytext"]["formats"]},  # keeps the pair in Jupyter
                   "kernelspec": nb.metadata["kernelspec"], "language_info": {"name": "python"}}
    return nb


def execute(nb, timeout=TIMEOUT):
    """run every cell top to bottom in a fresh python3 kernel, with notebooks/ as the working folder."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    # the kernel imports this checkout's modules, whichever copy of the project is installed
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    os.environ["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in paths if p and p != ROOT])
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": HERE}},
                   coalesce_streams=True,  # consecutive printed lines in one output
                   record_timing=False).execute()  # no per-cell timestamps
    nb.metadata.language_info = {"name": "python"}  # not the kernel's python version: the same on every machine
    return nb


def main(argv=None):
    p = argparse.ArgumentParser(description="run the classroom notebooks and save them with their outputs")
    p.add_argument("names", nargs="*", metavar="NAME", help=f"notebooks to run (default: all): {', '.join(NOTEBOOKS)}")
    names = p.parse_args(argv).names
    unknown = [n for n in names if n not in NOTEBOOKS]
    if unknown:
        p.exit(2, f"error: unknown notebook {', '.join(unknown)}; choose from {', '.join(NOTEBOOKS)}\n")
    for name in names or NOTEBOOKS:
        t0 = time.time()
        nbformat.write(execute(source(name)), os.path.join(HERE, name + ".ipynb"))
        print(f"{name}.ipynb: ran in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
