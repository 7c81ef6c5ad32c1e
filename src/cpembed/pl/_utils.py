"""The show / save / return_fig convention shared by every plot (scanpy's)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)


def finish_figure(fig: Figure, *, show: bool | None, save: str | None, return_fig: bool) -> Figure | None:
    """Save, show and/or return ``fig`` as scanpy's plotting functions do.

    Parameters
    ----------
    fig
        The finished figure.
    show
        Show it; ``None`` shows it only when it is neither saved nor returned.
    save
        File path to write the figure to (format from the extension).
    return_fig
        Return the figure instead of closing it.

    Returns
    -------
    ``fig`` when ``return_fig`` is true, else ``None``.
    """
    import matplotlib.pyplot as plt

    if save is not None:
        fig.savefig(save, dpi=150, bbox_inches="tight")
        logger.info("saved figure to %s", save)
    if show is None:
        show = save is None and not return_fig
    if show:
        plt.show()
    if return_fig:
        return fig
    if not show:
        plt.close(fig)
    return None
