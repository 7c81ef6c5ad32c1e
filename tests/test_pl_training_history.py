from types import SimpleNamespace

import matplotlib
import numpy as np
import pandas as pd
import pytest

import cpembed as cpe
from cpembed.pl._training_history import COUNT_COLUMNS

matplotlib.use("Agg")


def _history() -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(0)
    stage1 = pd.DataFrame({"n_batches": 40.0, "n_skipped": 0.0, "loss": rng.random(3), "cwmm": rng.random(3)})
    stage2 = pd.DataFrame(
        {"n_batches": 20.0, "n_skipped": 1.0, "loss": rng.random(4), "cwmm": rng.random(4), "supcon": rng.random(4)}
    )
    return {"stage1": stage1, "stage2": stage2}


def _lines_by_label(ax) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {line.get_label(): (np.asarray(line.get_xdata()), np.asarray(line.get_ydata())) for line in ax.lines}


def test_one_panel_per_stage_draws_every_loss_but_not_the_counts():
    history = _history()
    fig = cpe.pl.training_history(history, return_fig=True)
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["stage1", "stage2"]
    for ax, losses in zip(axes, history.values(), strict=True):
        lines = _lines_by_label(ax)
        expected = [column for column in losses.columns if column not in COUNT_COLUMNS]
        assert sorted(lines) == sorted(expected)
        for column in expected:
            x, y = lines[column]
            np.testing.assert_array_equal(x, np.arange(1, len(losses) + 1))
            np.testing.assert_allclose(y, losses[column].to_numpy())
    matplotlib.pyplot.close(fig)


def test_single_axis_puts_stages_one_after_the_other_with_boundaries():
    import matplotlib.pyplot as plt

    history = _history()
    fig, ax = plt.subplots()
    assert cpe.pl.training_history(history, ax=ax, show=False) is None
    lines = _lines_by_label(ax)
    x2, y2 = lines["stage2: supcon"]
    np.testing.assert_array_equal(x2, np.arange(4, 8))  # stage 1 has 3 epochs
    np.testing.assert_allclose(y2, history["stage2"]["supcon"].to_numpy())
    np.testing.assert_array_equal(lines["stage1: cwmm"][0], [1, 2, 3])
    boundaries = [line for line in ax.lines if not line.get_label().startswith("stage")]
    assert [float(line.get_xdata()[0]) for line in boundaries] == [3.5]
    plt.close(fig)


def test_reads_history_of_a_model_object_and_plain_loss_lists():
    model_like = SimpleNamespace(history_={"loss": [3.0, 2.0, 1.5]})  # the CWAMSN layout
    fig = cpe.pl.training_history(model_like, return_fig=True)
    x, y = _lines_by_label(fig.axes[0])["loss"]
    np.testing.assert_array_equal(y, [3.0, 2.0, 1.5])
    np.testing.assert_array_equal(x, [1, 2, 3])
    matplotlib.pyplot.close(fig)


@pytest.mark.slow
def test_trained_cellpaintr_on_real_data(tmp_path):
    from cpembed.model import CellPainTR

    adata = cpe.datasets.bbbc021()
    adata = adata[adata.obs["Metadata_Batch"].isin(["Week1", "Week2"])].copy()
    cpe.pp.recipe_jump(adata, "Metadata_Plate", "Metadata_is_negcon")
    CellPainTR.setup_anndata(adata, batch_key="Metadata_Batch", labels_key="Metadata_Compound")
    model = CellPainTR(adata, d_model=8, n_layers=1, d_mlp=16)
    model.train(
        stage1={"max_epochs": 2, "batch_size": 64},
        stages=(1,),
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
    )
    path = tmp_path / "history.png"
    assert cpe.pl.training_history(model, save=str(path)) is None
    assert path.stat().st_size > 0
    fig = cpe.pl.training_history(model, return_fig=True)
    _, y = _lines_by_label(fig.axes[0])["cwmm"]
    np.testing.assert_allclose(y, model.history_["stage1"]["cwmm"].to_numpy())
    matplotlib.pyplot.close(fig)


def test_untrained_history_and_wrong_type_are_refused():
    with pytest.raises(ValueError, match="no epoch"):
        cpe.pl.training_history({"stage1": pd.DataFrame()}, show=False)
    with pytest.raises(TypeError, match="history_"):
        cpe.pl.training_history([1.0, 2.0], show=False)


def test_diverged_epochs_are_not_dropped_silently():
    history = _history()
    history["stage2"].loc[2, "supcon"] = np.nan
    with pytest.warns(UserWarning, match=r"Stage 'stage2' has NaN or infinite losses in 1 epochs \(3\)"):
        fig = cpe.pl.training_history(history, return_fig=True)
    matplotlib.pyplot.close(fig)
