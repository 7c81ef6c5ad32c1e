import contextlib
import io
import subprocess
import sys
from pathlib import Path

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import pytest

import cpembed as cpe
from cpembed._report import (
    ADATA_H5AD,
    DEFAULT_METHODS,
    EMBEDDING_KEYS,
    HISTORY_PNG,
    RESULTS_CSV,
    SUMMARY_MD,
    TABLE_PNG,
    UMAP_PNG,
    CWAMSNSettings,
    ReportConfig,
    run_report,
)
from cpembed.bm import METRIC_COLUMNS, SCORE_COLUMNS
from cpembed.cli import main

matplotlib.use("Agg")

REPORT_FILES = (RESULTS_CSV, TABLE_PNG, UMAP_PNG, HISTORY_PNG, ADATA_H5AD, SUMMARY_MD)


@pytest.fixture(scope="module")
def bbbc021_report(tmp_path_factory):
    """``cpembed run --quick`` on the bundled BBBC021 profiles: (exit status, stdout, report folder)."""
    out = tmp_path_factory.mktemp("report")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = main(["run", "--out", str(out), "--quick", "--no-progress"])
    return status, printed.getvalue(), out


def _three_weeks() -> ad.AnnData:
    adata = cpe.datasets.bbbc021()
    return adata[adata.obs["Metadata_Batch"].isin(["Week1", "Week2", "Week3"])].copy()


def test_bundled_run_writes_every_file_and_prints_the_table(bbbc021_report):
    status, printed, out = bbbc021_report
    assert status == 0
    for name in REPORT_FILES:
        assert (out / name).stat().st_size > 0, name
    for method in DEFAULT_METHODS:
        assert method in printed


def test_results_csv_has_one_row_per_method_with_table1_columns(bbbc021_report):
    _, _, out = bbbc021_report
    table = pd.read_csv(out / RESULTS_CSV, index_col="method")
    assert list(table.index) == list(DEFAULT_METHODS)
    expected = [*METRIC_COLUMNS, *SCORE_COLUMNS, "nsc", "nscb"]
    assert list(table.columns) == expected
    assert np.isfinite(table.to_numpy()).all()
    assert ((table >= 0) & (table <= 1)).all().all()


def test_h5ad_holds_the_preprocessed_profiles_and_every_embedding(bbbc021_report):
    _, _, out = bbbc021_report
    written = ad.read_h5ad(out / ADATA_H5AD)
    reference = cpe.datasets.bbbc021()
    cpe.pp.recipe_jump(reference, "Metadata_Plate", "Metadata_is_negcon")
    assert list(written.var_names) == list(reference.var_names)
    np.testing.assert_allclose(written.X, reference.X, rtol=1e-6)
    for method in DEFAULT_METHODS:
        key = EMBEDDING_KEYS[method]
        assert key == "X" or written.obsm[key].shape[0] == reference.n_obs
    cpe.tl.combat(reference, "Metadata_Batch")
    np.testing.assert_allclose(written.obsm["X_combat"], reference.obsm["X_combat"], rtol=1e-5, atol=1e-5)


def test_table_matches_the_library_on_the_written_embeddings(bbbc021_report):
    _, _, out = bbbc021_report
    written = ad.read_h5ad(out / ADATA_H5AD)
    table = pd.read_csv(out / RESULTS_CSV, index_col="method")
    obs = written.obs
    scores = cpe.bm.benchmark(
        written,
        "X_harmony",
        batch_key="Metadata_Batch",
        label_key="Metadata_moa",
        perturbation_key="Metadata_Compound",
        plate_key="Metadata_Plate",
        control_key="Metadata_is_negcon",
        metrics=["graph_connectivity", "silhouette_label"],
        progress=False,
    )
    for column in ("graph_connectivity", "silhouette_label"):
        assert table.loc["harmony", column] == pytest.approx(scores.loc["X_harmony", column], rel=1e-6)
    accuracy = cpe.bm.moa_accuracy(
        written.X,
        obs["Metadata_Compound"].to_numpy(),
        obs["Metadata_Concentration"].to_numpy(),
        moa=obs["Metadata_moa"].to_numpy(),
        batch=obs["Metadata_Batch"].to_numpy(),
        is_control=obs["Metadata_is_negcon"].to_numpy(),
    )
    assert table.loc["baseline", "nsc"] == pytest.approx(accuracy.nsc)
    assert table.loc["baseline", "nscb"] == pytest.approx(accuracy.nscb)


def test_summary_links_every_picture_and_lists_the_methods(bbbc021_report):
    _, _, out = bbbc021_report
    summary = (out / SUMMARY_MD).read_text()
    for picture in (TABLE_PNG, UMAP_PNG, HISTORY_PNG):
        assert f"]({picture})" in summary
    assert "| wells | 632 |" in summary
    for method in DEFAULT_METHODS:
        assert f"| {method} |" in summary


@pytest.mark.parametrize("suffix", [".csv", ".h5ad"])
def test_input_from_a_file(tmp_path, suffix):
    adata = _three_weeks()
    path = tmp_path / f"profiles{suffix}"
    if suffix == ".csv":
        cpe.io.write_profiles(adata, path)
    else:
        adata.write_h5ad(path)
    out = tmp_path / "report"
    status = main(["run", str(path), "--out", str(out), "--methods", "baseline,pca", "--quick", "--no-progress"])
    assert status == 0
    table = pd.read_csv(out / RESULTS_CSV, index_col="method")
    assert list(table.index) == ["baseline", "pca"]
    assert table[list(METRIC_COLUMNS)].notna().all().all()
    assert not (out / HISTORY_PNG).exists()
    assert ad.read_h5ad(out / ADATA_H5AD).n_obs == adata.n_obs


def test_run_report_leaves_the_input_unchanged(tmp_path):
    adata = _three_weeks()
    before = adata.copy()
    config = ReportConfig(methods=("baseline", "combat"), null_size=200, progress=False)
    table = run_report(adata, config, tmp_path)
    assert list(table.index) == ["baseline", "combat"]
    np.testing.assert_array_equal(adata.X, before.X)
    pd.testing.assert_frame_equal(adata.obs, before.obs)
    assert list(adata.obsm) == []
    assert list(adata.uns) == list(before.uns)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["missing.csv"], "does not exist"),
        (["--batch-key", "Metadata_Lab"], "Metadata_Lab"),
        (["--control-key", "Metadata_Compound"], "must be boolean"),
        (["--methods", "pca,cwamsn"], "image AnnData"),
    ],
)
def test_bad_input_exits_with_2_and_a_message(tmp_path, capsys, arguments, message):
    status = main(["run", "--out", str(tmp_path / "report"), *arguments])
    assert status == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["run", "--out", "x", "--methods", "pca,tsne"], "Unknown methods ['tsne']"),
        (["run"], "--out"),
        (["draw"], "invalid choice"),
    ],
)
def test_bad_arguments_are_argparse_errors(capsys, arguments, message):
    with pytest.raises(SystemExit) as exit_info:
        main(arguments)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_command_line_prints_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "cpembed.cli", "run", "--out", str(tmp_path), "--perturbation-key", "Metadata_Drug"],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).parent,
    )
    assert result.returncode == 2
    assert "cpembed: error:" in result.stderr
    assert "Metadata_Drug" in result.stderr
    assert "Traceback" not in result.stderr


def test_cwamsn_embeds_images_and_joins_them_to_the_profile_wells(tmp_path):
    images = cpe.datasets.simulate_images(tmp_path / "store.h5", 2, 2, n_plates=4, n_sites=2, image_size=32, seed=0)
    images.obs["plate_well"] = images.obs["Metadata_Plate"].astype(str) + "/" + images.obs["Metadata_Well"].astype(str)
    cpe.tl.handcrafted_features(images)
    profiles = cpe.pp.aggregate(images, by="plate_well", obsm_key="X_handcrafted")
    images.write_h5ad(tmp_path / "images.h5ad")
    config = ReportConfig(
        perturbation_key="Metadata_Perturbation",
        methods=("baseline", "cwamsn"),
        images=tmp_path / "images.h5ad",
        cwamsn=CWAMSNSettings.tiny(),
        null_size=200,
        progress=False,
    )
    table = run_report(profiles, config, tmp_path / "report")
    assert list(table.index) == ["baseline", "cwamsn"]
    written = ad.read_h5ad(tmp_path / "report" / ADATA_H5AD)
    assert written.obsm["X_cwamsn"].shape == (profiles.n_obs, CWAMSNSettings.tiny().embed_dim)
    assert np.isfinite(written.obsm["X_cwamsn"]).all()
