import contextlib
import io
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import pytest

import cpembed as cpe
import cpembed._report
from cpembed._report import (
    ADATA_H5AD,
    DEFAULT_METHODS,
    EMBEDDING_KEYS,
    HISTORY_PNG,
    REPORT_FILES,
    RESULTS_CSV,
    SUMMARY_MD,
    TABLE_PNG,
    UMAP_PNG,
    CellPainTRSettings,
    CWAMSNSettings,
    ReportConfig,
    fit_to_budget,
    prepare_report,
    probe_seconds_per_well,
    run_report,
)
from cpembed.bm import METRIC_COLUMNS, SCORE_COLUMNS
from cpembed.cli import KEY_OPTIONS, _load, build_parser, main
from cpembed.model._training_plan import CellPainTRTrainingPlan

matplotlib.use("Agg")

FAST = ["--methods", "baseline,pca", "--quick", "--no-progress"]


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


@pytest.mark.slow
def test_bundled_run_writes_every_file_and_prints_the_table(bbbc021_report):
    status, printed, out = bbbc021_report
    assert status == 0
    for name in REPORT_FILES:
        assert (out / name).stat().st_size > 0, name
    for method in DEFAULT_METHODS:
        assert method in printed


@pytest.mark.slow
def test_results_csv_has_one_row_per_method_with_table1_columns(bbbc021_report):
    _, _, out = bbbc021_report
    table = pd.read_csv(out / RESULTS_CSV, index_col="method")
    assert list(table.index) == list(DEFAULT_METHODS)
    expected = [*METRIC_COLUMNS, *SCORE_COLUMNS, "nsc", "nscb"]
    assert list(table.columns) == expected
    assert np.isfinite(table.to_numpy()).all()
    assert ((table >= 0) & (table <= 1)).all().all()


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_summary_links_every_picture_and_lists_the_methods(bbbc021_report):
    _, _, out = bbbc021_report
    summary = (out / SUMMARY_MD).read_text()
    for picture in (TABLE_PNG, UMAP_PNG, HISTORY_PNG):
        assert f"]({picture})" in summary
    assert "| wells | 632 |" in summary
    for method in DEFAULT_METHODS:
        assert f"| {method} |" in summary


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_cwamsn_embeds_images_and_joins_them_to_the_profile_wells(tmp_path):
    images = cpe.datasets.simulate_images(tmp_path / "store.h5", 4, 3, n_plates=8, n_sites=1, image_size=32, seed=0)
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


@pytest.fixture(scope="module")
def three_weeks_h5ad(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("input") / "profiles.h5ad"
    _three_weeks().write_h5ad(path)
    return path


def _folder_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in folder.iterdir()}


def _stop_training(monkeypatch, stop) -> None:
    """Make CellPainTR's first training step call ``stop``, as Ctrl-C or a cluster's kill would arrive."""

    def training_step(self, batch, batch_idx):
        stop()

    monkeypatch.setattr(CellPainTRTrainingPlan, "training_step", training_step)


@pytest.mark.slow
def test_interrupted_rerun_leaves_the_earlier_report_whole(three_weeks_h5ad, tmp_path, capsys, monkeypatch):
    out = tmp_path / "report"
    assert main(["run", str(three_weeks_h5ad), "--out", str(out), *FAST]) == 0
    earlier = _folder_bytes(out)

    def ctrl_c():
        raise KeyboardInterrupt

    _stop_training(monkeypatch, ctrl_c)
    capsys.readouterr()
    status = main(["run", str(three_weeks_h5ad), "--out", str(out), "--methods", "baseline,cellpaintr", *FAST[2:]])
    assert status == 128 + signal.SIGINT
    assert "interrupted; no report was written" in capsys.readouterr().err
    assert _folder_bytes(out) == earlier
    assert [path.name for path in tmp_path.iterdir()] == ["report"]  # no half-written folder beside it


def test_sigterm_stops_the_run_with_a_non_zero_status(three_weeks_h5ad, tmp_path, capsys, monkeypatch):
    """A cluster's time limit (SIGTERM) during training: Lightning alone would end the process with status 0."""
    _stop_training(monkeypatch, lambda: os.kill(os.getpid(), signal.SIGTERM))
    out = tmp_path / "report"
    previous = signal.getsignal(signal.SIGTERM)
    status = main(["run", str(three_weeks_h5ad), "--out", str(out), "--methods", "cellpaintr", *FAST[2:]])
    assert status == 128 + signal.SIGTERM
    assert "stopped by SIGTERM" in capsys.readouterr().err
    assert not out.exists()
    assert signal.getsignal(signal.SIGTERM) == previous


@pytest.mark.slow
def test_rerun_with_fewer_methods_leaves_no_file_of_the_earlier_run(three_weeks_h5ad, tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    for name in REPORT_FILES:
        (out / name).write_text("earlier run")
    assert main(["run", str(three_weeks_h5ad), "--out", str(out), *FAST]) == 0
    assert sorted(path.name for path in out.iterdir()) == sorted(set(REPORT_FILES) - {HISTORY_PNG})
    assert all(content != b"earlier run" for content in _folder_bytes(out).values())


def test_errors_of_the_run_itself_are_not_usage_errors(three_weeks_h5ad, tmp_path, monkeypatch):
    """A ValueError from scoring is a failure of the run, shown with its traceback, not a one-line usage error."""

    def broken_benchmark(*args, **kwargs):
        raise ValueError("a bug in scoring")

    monkeypatch.setattr(cpe.bm, "benchmark", broken_benchmark)
    with pytest.raises(ValueError, match="a bug in scoring"):
        main(["run", str(three_weeks_h5ad), "--out", str(tmp_path / "report"), *FAST])
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize(
    ("make_out", "message"),
    [
        (lambda folder: (folder / "report").write_text("not a folder"), "is a file"),
        (lambda folder: (folder / "report").mkdir() or (folder / "report" / "notes.txt").write_text(""), "notes.txt"),
    ],
)
def test_an_output_that_cannot_be_a_report_folder_exits_with_2(tmp_path, capsys, make_out, message):
    make_out(tmp_path)
    status = main(["run", "--out", str(tmp_path / "report"), *FAST])
    assert status == 2
    assert message in capsys.readouterr().err


def test_truncated_input_exits_with_2_and_one_line(three_weeks_h5ad, tmp_path, capsys):
    truncated = tmp_path / "truncated.h5ad"
    content = three_weeks_h5ad.read_bytes()
    truncated.write_bytes(content[: len(content) // 2])
    status = main(["run", str(truncated), "--out", str(tmp_path / "report"), *FAST])
    assert status == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert str(truncated) in error


def test_plate_with_one_control_exits_with_2_and_one_line(tmp_path, capsys):
    adata = _three_weeks()
    plate = adata.obs["Metadata_Plate"].iloc[0]
    controls = np.flatnonzero((adata.obs["Metadata_Plate"] == plate) & adata.obs["Metadata_is_negcon"])
    adata = adata[np.setdiff1d(np.arange(adata.n_obs), controls[1:])].copy()
    path = tmp_path / "profiles.h5ad"
    adata.write_h5ad(path)
    status = main(["run", str(path), "--out", str(tmp_path / "report"), *FAST])
    assert status == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert "cpembed: error:" in error
    assert f"plate {plate!r} (1 control well)" in error


def test_too_few_wells_for_the_benchmark_exit_with_2_before_any_work(tmp_path, capsys):
    adata = _three_weeks()
    keep = np.flatnonzero(adata.obs["Metadata_is_negcon"].to_numpy())
    keep = np.concatenate([keep, np.flatnonzero(~adata.obs["Metadata_is_negcon"].to_numpy())[:40]])
    path = tmp_path / "profiles.h5ad"
    adata[np.sort(keep)].copy().write_h5ad(path)
    assert main(["run", str(path), "--out", str(tmp_path / "report"), *FAST]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert "The graph metrics see 40 wells" in error
    assert not (tmp_path / "report").exists()


def test_debug_shows_the_traceback_of_an_input_error(tmp_path):
    with pytest.raises(KeyError, match="Metadata_Lab"):
        main(["run", "--out", str(tmp_path / "report"), "--batch-key", "Metadata_Lab", "--debug"])


def test_the_working_folder_cannot_be_the_report_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--out", ".", *FAST]) == 2
    assert "working folder" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_help_shows_the_defaults_as_plain_text(capsys):
    for command in (["--help"], ["run", "--help"]):
        with pytest.raises(SystemExit):
            main(command)
        printed = " ".join(capsys.readouterr().out.split())  # argparse wraps lines to the terminal's width
        assert "``" not in printed
    assert "(default: Metadata_Batch, BBBC021's)" in printed
    assert "(default: 0)" in printed  # --seed
    assert "(default: None)" not in printed


def test_every_default_key_used_on_an_own_table_is_named(three_weeks_h5ad, caplog):
    args = build_parser().parse_args(["run", str(three_weeks_h5ad), "--out", "report", "--batch-key", "Metadata_Plate"])
    with caplog.at_level("WARNING", logger="cpembed"):
        _, config = _load(args)
    notices = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert len(notices) == len(KEY_OPTIONS) - 1
    assert not any("--batch-key" in notice for notice in notices)
    assert "--plate-key not given: using 'Metadata_Plate'" in notices[0]
    assert config.batch_key == "Metadata_Plate"
    assert config.plate_key == "Metadata_Plate"


def test_the_bundled_run_needs_no_key_options(caplog):
    with caplog.at_level("WARNING", logger="cpembed"):
        _, config = _load(build_parser().parse_args(["run", "--out", "report", "--well-key", "none"]))
    assert not [record for record in caplog.records if record.levelname == "WARNING"]
    assert config.batch_key == ReportConfig().batch_key
    assert config.well_key is None


def test_an_unreadable_format_lists_every_readable_one(tmp_path, capsys):
    path = tmp_path / "profiles.txt"
    path.write_text("a,b\n1,2\n")
    assert main(["run", str(path), "--out", str(tmp_path / "report")]) == 2
    error = capsys.readouterr().err
    assert ".csv, .csv.gz, .parquet, .h5ad" in error


@pytest.mark.parametrize(
    ("seconds_per_well", "fraction"),
    [(1e-3, 1.0), (1e-2, 0.5), (1.0, 2 * 64 / 1000)],  # within the budget; half over it; the two-minibatch floor
)
def test_training_is_cut_to_the_time_budget(seconds_per_well, fraction):
    settings = CellPainTRSettings(epochs=(4, 4, 2), batch_sizes=(32, 32, 64))
    size = fit_to_budget(settings, (1000, 200), seconds_per_well, budget=50.0, device="CPU")
    assert size.full_seconds == pytest.approx(10 * 1000 * seconds_per_well)
    assert size.fraction == pytest.approx(fraction)
    assert size.estimated_seconds == pytest.approx(size.full_seconds * fraction)
    assert ("each epoch trains" in size.describe()) == (fraction < 1)


@pytest.mark.slow
def test_report_trains_the_share_of_each_epoch_that_fits_the_budget(caplog, capsys, monkeypatch):
    """A probe that finds the model slow makes the report train two minibatches per epoch and say so first."""
    monkeypatch.setattr(cpembed._report, "probe_seconds_per_well", lambda adata, config, preset: 1.0)
    settings = replace(CellPainTRSettings.tiny(), time_budget=1.0)
    config = ReportConfig(cellpaintr=settings, methods=("cellpaintr",))
    adata = prepare_report(_three_weeks(), config).adata
    with caplog.at_level("INFO", logger="cpembed"):
        history = cpembed._report._cellpaintr(adata, config)
    assert "each epoch trains" in caplog.text
    n_batches = history["stage1"]["n_batches"]
    full = -(-adata.n_obs // CellPainTRSettings.tiny().batch_sizes[0])
    assert (n_batches == int(full * 2 * 64 / adata.n_obs)).all()
    printed = capsys.readouterr()
    cut = int(n_batches.iloc[0])
    assert f"{cut}/{cut}" in printed.out + printed.err  # the bar counts minibatches
    training = adata.uns["X_cellpaintr"]["params"]["training"]
    assert training["fraction_of_each_epoch"] == pytest.approx(2 * 64 / adata.n_obs)


@pytest.mark.slow
def test_the_timing_probe_returns_a_time_per_well():
    config = ReportConfig(cellpaintr=CellPainTRSettings.tiny(), progress=False)
    adata = prepare_report(_three_weeks(), config).adata
    seconds = probe_seconds_per_well(adata, config, "anchored")
    assert 0 < seconds < 10
