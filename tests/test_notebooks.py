"""Every notebook in ``notebooks/`` runs top to bottom on a fresh kernel of this interpreter.

The kernel is this test's own Python (``sys.executable``), described by a kernel spec written
into the test's temporary folder, so nothing is registered with Jupyter outside it. The kernel's
temporary files, IPython profile and Jupyter runtime files go there too, and the test checks
that each notebook removed its temporary folder and wrote nothing next to itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

try:  # the notebooks are part of the product: without their runner the tests fail, they never skip
    import ipykernel  # noqa: F401
    import nbclient
    import nbformat
except ImportError as error:
    raise ImportError(f"the notebook tests need nbformat, nbclient and ipykernel ({error}): "
                      "pip install 'portrait[notebooks]'") from error

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient.exceptions import CellExecutionError
from nbformat.v4 import new_code_cell, new_notebook

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOK_PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))
KERNEL_NAME = "portrait-test-kernel"
# A guard against a hung cell, not a speed target: warm, each notebook takes 10-20 s on 2 cores, but
# the first run after a fresh checkout also compiles the numba kernels (cached afterwards), which
# can take a minute or more.
CELL_TIMEOUT_S = 600
# ``tqdm.auto`` (the job's progress bars) warns in a notebook without ipywidgets; the ``notebooks``
# extra brings ipywidgets through ``jupyter``, a bare test environment does not.
_ENVIRONMENT_WARNING = "IProgress not found"


def _kernel_manager(folder: Path) -> AsyncKernelManager:
    """A kernel manager for this interpreter, from a kernel spec that exists only under ``folder``."""
    spec_dir = folder / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": f"Python ({sys.executable})", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    specs = KernelSpecManager(kernel_dirs=[str(folder / "kernels")])
    return AsyncKernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=specs)


def _execute(notebook, folder: Path, monkeypatch) -> Path:
    """Run ``notebook`` in place, with the kernel started in ``notebooks/``; returns the kernel's TMPDIR.

    Raises ``CellExecutionError`` (with the cell's source and traceback) at the first failing cell.
    """
    scratch = folder / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(folder / "runtime"))   # connection files
    env = {**os.environ, "TMPDIR": str(scratch), "IPYTHONDIR": str(folder / "ipython"),
           "MPLBACKEND": "module://matplotlib_inline.backend_inline", "PYTHONWARNINGS": "default"}
    client = nbclient.NotebookClient(notebook, km=_kernel_manager(folder), timeout=CELL_TIMEOUT_S,
                                     kernel_name=KERNEL_NAME, resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute(env=env, cleanup_kc=True)   # cleanup_kc: shut the kernel down and close its sockets
    return scratch


def test_there_are_notebooks():
    assert {p.name for p in NOTEBOOK_PATHS} >= {"quickstart.ipynb", "dp_analytics.ipynb", "recommendations.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOK_PATHS, ids=lambda p: p.stem)
def test_notebook_is_committed_clean(path):
    """nbformat 4, valid, and without outputs or execution counts (they are produced in CI, not stored)."""
    notebook = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    assert notebook.nbformat == 4
    nbformat.validate(notebook)
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {index} has stored outputs; clear them before committing"
            assert cell.execution_count is None, f"{path.name} cell {index} has an execution count; clear it"
    assert notebook.cells[0].cell_type == "markdown", f"{path.name} should open with a markdown cell on what it does"


def test_notebooks_match_their_source():
    """The committed notebooks are what ``notebooks/_build.py`` writes (edit the cells there, then rebuild)."""
    build = subprocess.run([sys.executable, str(NOTEBOOKS / "_build.py"), "--check"], check=False,
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr


@pytest.mark.parametrize("path", NOTEBOOK_PATHS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch):
    notebook = nbformat.read(path, as_version=4)
    before = sorted(p.name for p in NOTEBOOKS.iterdir())
    try:
        scratch = _execute(notebook, tmp_path, monkeypatch)
    except CellExecutionError as error:
        pytest.fail(f"{path.name} failed:\n{error}", pytrace=False)
    assert sorted(p.name for p in NOTEBOOKS.iterdir()) == before, f"{path.name} wrote into {NOTEBOOKS}"
    assert list(scratch.iterdir()) == [], f"{path.name} left files in its temporary folder: {list(scratch.iterdir())}"
    warnings = [(index, output.text) for index, cell in enumerate(notebook.cells) if cell.cell_type == "code"
                for output in cell.outputs if output.get("name") == "stderr" and "Warning" in output.text
                and _ENVIRONMENT_WARNING not in output.text]
    assert warnings == [], f"{path.name} printed warnings: {warnings}"


def test_the_dp_notebook_writes_three_analyses_beside_their_tumult_code():
    """Each of the Tumult section's analyses: a markdown cell with the Tumult Analytics code, then the Portrait cell
    that releases it per identity (``test_notebook_runs`` executes them)."""
    cells = nbformat.read(NOTEBOOKS / "dp_analytics.ipynb", as_version=4).cells
    start = next(i for i, c in enumerate(cells)
                 if c.cell_type == "markdown" and "For Tumult Analytics users" in c.source)
    section = cells[start:next(i for i, c in enumerate(cells) if i > start and c.source.startswith("## "))]
    tumult = [i for i, c in enumerate(section) if c.cell_type == "markdown" and "QueryBuilder(" in c.source]
    assert len(tumult) == 3
    for index in tumult:
        assert "session.evaluate(" in section[index].source
        assert section[index + 1].cell_type == "code" and ".release()" in section[index + 1].source
    assert 'privacy_unit="identity_id", accounts_per_human=2' in "".join(c.source for c in section)


def test_a_failing_cell_stops_the_run_with_its_error(tmp_path, monkeypatch):
    notebook = new_notebook(cells=[new_code_cell("ran = True"), new_code_cell("raise ValueError('bad amount bounds')"),
                                   new_code_cell("never = True")])
    with pytest.raises(CellExecutionError, match="bad amount bounds") as caught:
        _execute(notebook, tmp_path, monkeypatch)
    assert "ValueError" in str(caught.value)
    assert notebook.cells[0].outputs == [] and notebook.cells[0].execution_count == 1
    assert notebook.cells[2].execution_count is None   # nothing after the failing cell ran
