"""Training curves of a model: the mean loss of every epoch, one panel per training stage."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ._utils import finish_figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: Bookkeeping columns of a stage history that are not losses (CellPainTR's training plan writes them).
COUNT_COLUMNS = ("n_batches", "n_skipped")
#: Column of the total loss, drawn dashed in black over its components (which it equals when there is one).
TOTAL_COLUMN = "loss"


def training_history(
    model_or_history: Any,
    *,
    show: bool | None = None,
    save: str | None = None,
    ax: Axes | None = None,
    return_fig: bool = False,
) -> Figure | None:
    """Plot the per-epoch losses of a trained model, stage by stage.

    Parameters
    ----------
    model_or_history
        A trained model with a ``history_`` attribute (:class:`~cpembed.model.CellPainTR`,
        :class:`~cpembed.model.CWAMSN`), or such a history itself: a mapping from stage name to a DataFrame of
        per-epoch losses (one row per epoch, one column per loss; the counts :data:`COUNT_COLUMNS` are left out) or
        to a sequence of per-epoch losses.
    show
        Show the figure (default: when neither ``save`` nor ``return_fig`` is set).
    save
        Path to save the figure to.
    ax
        Draw every stage on this axis, one after the other, with grey dotted lines at the stage boundaries. Without it
        each stage gets a panel of its own, as losses differ in scale between stages (CellPainTR adds the
        contrastive loss from stage 2 on). The total loss (column ``loss``) is drawn dashed in black over its
        components.
    return_fig
        Return the :class:`~matplotlib.figure.Figure`.

    Returns
    -------
    The figure if ``return_fig`` is true, else ``None``.

    Raises
    ------
    ValueError
        When the history holds no epoch (the model was not trained).

    Warns
    -----
    UserWarning
        When a loss is NaN or infinite in some epoch (training diverged): matplotlib would leave those epochs out of
        the curve without a trace.
    """
    import matplotlib.pyplot as plt

    stages = loss_tables(model_or_history)
    _warn_non_finite(stages)
    if ax is None:
        fig, axes = plt.subplots(1, len(stages), figsize=(3.6 * len(stages), 3.2), squeeze=False)
        for panel, (name, losses) in zip(axes[0], stages.items(), strict=True):
            _draw_losses(panel, losses, offset=0)
            panel.set_title(name)
        axes[0, 0].set_ylabel("mean loss per epoch")
    else:
        fig = ax.figure
        _draw_stages_in_sequence(ax, stages)
        ax.set_ylabel("mean loss per epoch")
    fig.tight_layout()
    return finish_figure(fig, show=show, save=save, return_fig=return_fig)


def loss_tables(model_or_history: Any) -> dict[str, pd.DataFrame]:
    """Return the history as stage name -> DataFrame (epochs × losses), without empty stages or count columns."""
    history = getattr(model_or_history, "history_", model_or_history)
    if not isinstance(history, Mapping):
        raise TypeError(
            f"Expected a trained model with `history_` or a mapping stage -> losses, got {type(history).__name__}."
        )
    tables = {str(name): _as_loss_table(name, values) for name, values in history.items()}
    tables = {name: table for name, table in tables.items() if len(table)}
    if not tables:
        raise ValueError("The training history holds no epoch: train the model first.")
    return tables


def _warn_non_finite(stages: dict[str, pd.DataFrame]) -> None:
    """Warn about each stage whose losses are NaN or infinite in some epoch, naming the epochs."""
    for name, losses in stages.items():
        bad = ~np.isfinite(losses.to_numpy(dtype=float)).all(axis=1)
        if bad.any():
            epochs = ", ".join(str(epoch) for epoch in np.flatnonzero(bad)[:10] + 1)
            warnings.warn(
                f"Stage {name!r} has NaN or infinite losses in {int(bad.sum())} epochs ({epochs}): training diverged "
                "there, and those epochs are missing from the curves. Lower the learning rate or check the input.",
                UserWarning,
                stacklevel=3,
            )


def _as_loss_table(name: str, values: pd.DataFrame | Sequence[float]) -> pd.DataFrame:
    table = values if isinstance(values, pd.DataFrame) else pd.DataFrame({name: np.asarray(values, dtype=float)})
    return table.drop(columns=[column for column in COUNT_COLUMNS if column in table.columns])


def _draw_losses(ax: Axes, losses: pd.DataFrame, *, offset: int, label_prefix: str = "") -> None:
    from matplotlib.ticker import MaxNLocator

    epochs = offset + np.arange(1, len(losses) + 1)
    for column in losses.columns:
        style = {"color": "black", "linestyle": "--", "zorder": 3} if column == TOTAL_COLUMN else {}
        values = losses[column].to_numpy(dtype=float)
        ax.plot(epochs, values, marker="o", markersize=3, label=f"{label_prefix}{column}", **style)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0.5, epochs[-1] + 0.5)
    ax.legend(fontsize="small", frameon=False)


def _draw_stages_in_sequence(ax: Axes, stages: dict[str, pd.DataFrame]) -> None:
    offset = 0
    for name, losses in stages.items():
        _draw_losses(ax, losses, offset=offset, label_prefix=f"{name}: ")
        if offset:
            ax.axvline(offset + 0.5, color="grey", linestyle=":", linewidth=1)
        offset += len(losses)
