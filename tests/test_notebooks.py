"""Every notebook in colabs/ runs top to bottom, and none is committed with outputs.

Each notebook is executed with nbclient on the ``python3`` kernel (``pip install ipykernel`` provides
it: jupyter_client falls back to ipykernel's own kernelspec, run with this interpreter), in a fresh
temporary directory, with ``INFODEC_SMOKE=1`` so notebooks pick their quick settings, and with this
checkout first on ``PYTHONPATH`` so the kernel imports the infodec under test. A failing cell fails
the test with that cell's source and error. New notebooks are picked up by the glob.
"""

import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "colabs").glob("*.ipynb"))
CELL_TIMEOUT_S = 300
KERNEL = "python3"


def kernel_env() -> dict[str, str]:
    """The kernel's environment: smoke settings, and this checkout importable from any directory."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "INFODEC_SMOKE": "1", "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


def test_notebooks_exist_and_python3_kernel_is_available():
    from jupyter_client.kernelspec import KernelSpecManager

    assert NOTEBOOKS, "no notebooks in colabs/"
    specs = KernelSpecManager().find_kernel_specs()
    assert KERNEL in specs, f"no {KERNEL!r} kernel ({specs}); pip install ipykernel"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_has_no_outputs(path):
    """Committed notebooks carry no outputs or execution counts (outputs belong to runs, not the repo)."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]
    assert not dirty, f"{path.name}: code cells {dirty} have outputs or execution counts; clear them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
@pytest.mark.slow
@pytest.mark.download
@pytest.mark.subprocess
def test_notebook_runs(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name=KERNEL, timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": str(tmp_path)}}
    )
    try:
        client.execute(env=kernel_env(), cwd=str(tmp_path))
    except nbclient.exceptions.CellExecutionError as e:
        pytest.fail(f"{path.name}: a cell failed\n{e}", pytrace=False)
    except nbclient.exceptions.CellTimeoutError as e:
        pytest.fail(f"{path.name}: a cell ran past {CELL_TIMEOUT_S} s\n{e}", pytrace=False)
    executed = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(cell.get("execution_count") for cell in executed), f"{path.name}: not every code cell ran"
    print(f"{path.name}: {len(executed)} code cells ran (python {sys.version.split()[0]})")
