"""Results table of :func:`cpembed.bm.benchmark`, drawn in the style of scib-metrics' ``plot_results_table``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ._utils import finish_figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: Column groups and their titles, in drawing order; columns absent from the table (or all NaN) are skipped.
COLUMN_GROUPS: dict[str, dict[str, str]] = {
    "Batch correction": {
        "graph_connectivity": "Graph\nconn.",
        "silhouette_batch": "Sil.\nbatch",
        "batch_classifier_control": "Batch clf\n(control)",
        "batch_classifier_no_control": "Batch clf\n(no control)",
        "kbet": "kBET",
        "ilisi": "iLISI",
    },
    "Bio conservation": {
        "leiden_nmi": "Leiden\nNMI",
        "leiden_ari": "Leiden\nARI",
        "silhouette_label": "Sil.\nlabel",
        "map_control": "mAP\n(control)",
        "map_no_rep": "mAP\n(no rep)",
        "bio_info_control": "Bio info\n(control)",
        "bio_info_no_control": "Bio info\n(no control)",
        "clisi": "cLISI",
        "map_control_fraction_retrieved": "Retrieved\n(control)",
        "map_no_rep_fraction_retrieved": "Retrieved\n(no rep)",
    },
    "Aggregate score": {
        "batch_score": "Batch",
        "bio_score": "Bio",
        "overall_score": "Overall",
        "total_score": "Total\n(JUMP)",
    },
}
#: Rows are sorted by the first of these columns the table has.
SORT_COLUMNS = ("overall_score", "total_score")
_AGGREGATE_GROUP = "Aggregate score"


def benchmark_table(
    df: pd.DataFrame,
    *,
    show: bool | None = None,
    save: str | None = None,
    ax: Axes | None = None,
    return_fig: bool = False,
) -> Figure | None:
    """Draw a benchmark table: one row per method, coloured circles per metric, bars for the aggregate scores.

    Methods are sorted by overall score (best on top). Each metric's circles are coloured by where the value lies
    among the methods (purple-green, centred on the column mean, ±2.5 standard deviations, as scib-metrics); the
    aggregate scores are bars of their value on a fixed 0–1 scale. Missing values show as a dash.

    Parameters
    ----------
    df
        The table returned by :func:`cpembed.bm.benchmark` (index: methods; columns: metric and score names).
    show
        Show the figure; ``None`` shows it unless it is saved or returned. Ignored when ``ax`` is given.
    save
        File path to write the figure to (format from the extension).
    ax
        Axes to draw into; by default a new figure sized to the table.
    return_fig
        Return the figure.

    Returns
    -------
    The figure when ``return_fig`` is true, else ``None``.
    """
    import matplotlib.pyplot as plt

    table, groups = _plotted_table(df)
    columns = [column for group in groups.values() for column in group]
    n_rows, n_columns = table.shape
    own_figure = ax is None
    if own_figure:
        fig, ax = plt.subplots(figsize=(2.2 + 1.05 * n_columns, 1.4 + 0.45 * n_rows))
    else:
        fig = ax.figure
    ax.set_xlim(-2.4, n_columns - 0.4)
    ax.set_ylim(n_rows - 0.4, -2.2)
    ax.axis("off")
    for row, method in enumerate(table.index):
        ax.text(-2.3, row, str(method), ha="left", va="center", fontsize=9, fontweight="bold")
        if row:
            ax.axhline(row - 0.5, color="0.8", linewidth=0.6, linestyle=(0, (1, 3)))
    for position, column in enumerate(columns):
        ax.text(position, -0.75, _title(column, groups), ha="center", va="bottom", fontsize=8)
        if column in groups.get(_AGGREGATE_GROUP, {}):
            _draw_bars(ax, position, table[column].to_numpy())
        else:
            _draw_circles(ax, position, table[column].to_numpy())
    _draw_group_headers(ax, groups)
    ax.axhline(-0.55, color="black", linewidth=0.8)
    if not own_figure:
        if save is not None:
            fig.savefig(save, dpi=150, bbox_inches="tight")
        return fig if return_fig else None
    return finish_figure(fig, show=show, save=save, return_fig=return_fig)


def _plotted_table(df: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, dict[str, str]]]:
    """The columns that can be drawn (known and not all missing), rows sorted by overall score."""
    if df.empty:
        raise ValueError("The benchmark table is empty: run cpembed.bm.benchmark first.")
    groups = {
        name: {column: title for column, title in titles.items() if column in df and df[column].notna().any()}
        for name, titles in COLUMN_GROUPS.items()
    }
    groups = {name: titles for name, titles in groups.items() if titles}
    if not groups:
        known = [column for titles in COLUMN_GROUPS.values() for column in titles]
        raise ValueError(f"The table has no metric column to draw; expected some of: {', '.join(known)}.")
    columns = [column for titles in groups.values() for column in titles]
    table = df[columns].astype(np.float64)
    sort_by = next((column for column in SORT_COLUMNS if column in columns), None)
    if sort_by is not None:
        table = table.sort_values(sort_by, ascending=False, na_position="last")
    return table, groups


def _title(column: str, groups: dict[str, dict[str, str]]) -> str:
    return next(titles[column] for titles in groups.values() if column in titles)


def _draw_circles(ax: Axes, x: float, values: np.ndarray) -> None:
    """Metric values as circles coloured relative to the other methods, value written inside."""
    import matplotlib as mpl

    finite = np.isfinite(values)
    centre = values[finite].mean() if finite.any() else 0.0
    spread = 2.5 * values[finite].std() if finite.sum() > 1 else 0.0
    norm = mpl.colors.Normalize(centre - (spread or 1.0), centre + (spread or 1.0))
    cmap = mpl.colormaps["PRGn"]
    for row, value in enumerate(values):
        if not np.isfinite(value):
            ax.text(x, row, "–", ha="center", va="center", fontsize=9, color="0.5")
            continue
        colour = cmap(norm(value))
        ax.scatter(x, row, s=620, color=colour, edgecolors="none", zorder=2)
        ax.text(x, row, f"{value:.2f}", ha="center", va="center", fontsize=7.5, color=_text_colour(colour), zorder=3)


def _draw_bars(ax: Axes, x: float, values: np.ndarray) -> None:
    """Aggregate scores as horizontal bars on a 0–1 scale, value written on the bar."""
    import matplotlib as mpl

    cmap = mpl.colormaps["YlGnBu"]
    left = x - 0.45
    ax.plot([left - 0.05] * 2, [-0.5, len(values) - 0.5], color="black", linewidth=0.6)
    for row, value in enumerate(values):
        if not np.isfinite(value):
            ax.text(x, row, "–", ha="center", va="center", fontsize=9, color="0.5")
            continue
        colour = cmap(0.15 + 0.85 * float(np.clip(value, 0, 1)))
        ax.barh(row, 0.9 * float(np.clip(value, 0, 1)), left=left, height=0.7, color=colour, zorder=2)
        ax.text(
            left + 0.04, row, f"{value:.2f}", ha="left", va="center", fontsize=7.5, color=_text_colour(colour), zorder=3
        )


def _draw_group_headers(ax: Axes, groups: dict[str, dict[str, str]]) -> None:
    """Group titles above their columns, underlined across them."""
    start = 0
    for name, titles in groups.items():
        stop = start + len(titles) - 1
        title = name if len(titles) > 2 else name.replace(" ", "\n")  # narrow groups: one word per line
        ax.text((start + stop) / 2, -1.85, title, ha="center", va="bottom", fontsize=9, fontweight="bold")
        ax.plot([start - 0.4, stop + 0.4], [-1.8, -1.8], color="black", linewidth=0.8)
        start = stop + 1


def _text_colour(rgba: tuple[float, ...]) -> str:
    """Black on light circles, white on dark ones (relative luminance)."""
    luminance = 0.2126 * rgba[0] + 0.7152 * rgba[1] + 0.0722 * rgba[2]
    return "black" if luminance > 0.5 else "white"
