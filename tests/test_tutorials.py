"""The tutorial notebooks run top to bottom (with CPEMBED_TUTORIAL_QUICK=1) and are stored with their outputs."""

import base64
import importlib.util
from pathlib import Path

import nbformat
import pytest

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
MAX_PNG_BYTES = 150_000


def load_executor():
    spec = importlib.util.spec_from_file_location("tutorials_execute", TUTORIALS / "execute.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def code_cells(notebook):
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def outputs_text(notebook) -> str:
    parts = []
    for cell in code_cells(notebook):
        for output in cell.outputs:
            parts.append(output.get("text", ""))
            parts.append(output.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def test_both_tutorials_exist():
    assert [path.name for path in NOTEBOOKS] == [
        "01_batch_correction_cellpaintr.ipynb",
        "02_images_to_embeddings_cwamsn.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_stored_notebook_has_parameters_outputs_and_small_images(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    cells = code_cells(notebook)
    assert "parameters" in cells[0].metadata.get("tags", []), "the first code cell must be tagged 'parameters'"
    assert "CPEMBED_TUTORIAL_QUICK" in cells[0].source
    counts = [cell.execution_count for cell in cells]
    assert counts == list(range(1, len(cells) + 1)), "stored outputs must come from one top-to-bottom run"
    errors = [output for cell in cells for output in cell.outputs if output.output_type == "error"]
    assert not errors
    pngs = [
        base64.b64decode(output.data["image/png"])
        for cell in cells
        for output in cell.outputs
        if "image/png" in output.get("data", {})
    ]
    assert pngs, "the tutorials show figures"
    assert max(len(png) for png in pngs) <= MAX_PNG_BYTES


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs_with_quick_settings(path):
    notebook = load_executor().execute(path, quick=True, timeout=600)
    cells = code_cells(notebook)
    assert all(cell.execution_count is not None for cell in cells)
    assert not [output for cell in cells for output in cell.outputs if output.output_type == "error"]
    text = outputs_text(notebook)
    if path.stem.startswith("01"):
        # The benchmark table is shown with every embedding and the aggregate scores.
        for name in ("X_pca", "X_combat", "X_harmony", "X_cellpaintr", "overall_score", "total_score"):
            assert name in text
    else:
        for name in ("handcrafted", "single-well MSN", "CWA-MSN", "plate F1, linear", "mAP vs DMSO"):
            assert name in text
