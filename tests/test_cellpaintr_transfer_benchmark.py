"""benchmarks/cellpaintr_transfer.py runs end to end and writes the tables its documentation page reads."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "cellpaintr_transfer.py"


@pytest.mark.slow
def test_quick_transfer_run_scores_every_row(tmp_path):
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    args = ["--quick", "--only", "profiles", "--seeds", "0", "--settings", "default", "--threads", "1"]
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(tmp_path / "profiles_cpu_transfer_seed0.csv", index_col=0)
    rows = ["Harmony", "CellPainTR zero-shot [default]", "CellPainTR zero-shot, shared features [default]"]
    assert set(rows) <= set(table.index)
    assert np.isfinite(table.loc[rows, ["batch_score", "bio_score", "overall_score"]].to_numpy()).all()
    summary = (tmp_path / "summary_cpu.txt").read_text()
    assert "target overall(CellPainTR zero-shot, shared features [default]) > overall(Harmony): met on" in summary
    # the new study lacks 30% of the model's features and has features the model never saw
    assert "zero-shot: matched" in result.stdout
    counts = result.stdout.split("zero-shot: matched ")[1].split("\n")[0]
    matched, missing, unknown = (int(part.split()[-1]) for part in f"matched {counts}".split(", "))
    assert missing == pytest.approx(0.3 * (matched + missing), abs=1)
    assert unknown > 0
