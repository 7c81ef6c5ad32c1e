"""UMAP grid comparing embeddings: methods as columns, colourings as rows (CellPainTR paper, Figures 4 and 7)."""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .._validation import (
    check_obs_keys,
    check_obsm_keys,
    check_result_finite,
    control_flags,
    get_finite_matrix,
    matrix_name,
)
from ._utils import finish_figure

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

#: Colour of negative-control wells in every panel (the paper draws them in red).
CONTROL_COLOR = "#d62728"
#: ``.uns`` key recording, for each UMAP :func:`umap` stored, what it was computed from.
RECORD_KEY = "cpe_umap"
#: Fewest wells a UMAP layout can be computed for (its spectral start needs more points than dimensions + 1).
MIN_WELLS = 4


def _basis_matrix(adata: AnnData, basis: str) -> np.ndarray:
    """The embedding as the float32 array UMAP reads, or an error naming it when it is unusable."""
    data = get_finite_matrix(adata, obsm_key=basis)
    where = matrix_name(obsm_key=basis)
    if data.ndim != 2:
        raise ValueError(f"{where} must be a 2-D wells × dimensions array, got shape {data.shape}.")
    with np.errstate(over="ignore"):
        data = data.astype(np.float32)
    check_result_finite(data, f"{where} in float32, as UMAP reads it,")
    return data


def _record(data: np.ndarray, basis: str, n_neighbors: int, random_state: int) -> dict:
    """What a UMAP was computed from: its parameters (basis and settings) and a checksum of the basis values."""
    checksum = hashlib.sha256(np.ascontiguousarray(data).tobytes() + str(data.shape).encode()).hexdigest()
    return {"params": {"basis": basis, "n_neighbors": n_neighbors, "random_state": random_state}, "checksum": checksum}


def compute_umap(adata: AnnData, basis: str, *, n_neighbors: int = 15, random_state: int = 0) -> np.ndarray:
    """Compute a 2-d UMAP of one embedding without touching ``adata``.

    Parameters
    ----------
    adata
        Annotated data matrix.
    basis
        ``.obsm`` key of the embedding, or ``"X"`` for the features.
    n_neighbors
        Size of the neighbourhood graph (scanpy's default, 15), the well itself included; at most the number of
        wells.
    random_state
        Seed of the UMAP layout.

    Returns
    -------
    The wells x 2 UMAP coordinates.
    """
    return _umap_of(_basis_matrix(adata, basis), n_neighbors=n_neighbors, random_state=random_state)


def _umap_of(data: np.ndarray, *, n_neighbors: int, random_state: int) -> np.ndarray:
    """The UMAP of a wells × dimensions float32 array (scanpy's neighbours and layout, on a scratch AnnData)."""
    import anndata as ad
    import scanpy as sc

    n_wells = data.shape[0]
    if n_wells < MIN_WELLS:
        raise ValueError(f"A UMAP needs at least {MIN_WELLS} wells, got {n_wells}: plot more wells.")
    if not 2 <= n_neighbors <= n_wells:
        raise ValueError(f"n_neighbors must lie between 2 and the number of wells ({n_wells}), got {n_neighbors}.")
    scratch = ad.AnnData(np.zeros((n_wells, 0), dtype=np.float32), obsm={"rep": data})
    sc.pp.neighbors(scratch, use_rep="rep", n_neighbors=n_neighbors, random_state=random_state)
    sc.tl.umap(scratch, random_state=random_state)
    return scratch.obsm["X_umap"]


def _palette(adata: AnnData, column: str, is_control: np.ndarray | None) -> dict[str, str]:
    """Colours per category; categories made only of control wells get :data:`CONTROL_COLOR`."""
    values = adata.obs[column].astype(str)
    present = set(values)
    # A categorical column keeps its own order (Week1, Week2, ..., Week10); anything else is sorted.
    order = adata.obs[column].cat.categories.astype(str) if adata.obs[column].dtype == "category" else sorted(present)
    categories = [category for category in order if category in present]
    control_categories = set()
    if is_control is not None:
        control_categories = set(values[is_control]) - set(values[~is_control])
    others = [category for category in categories if category not in control_categories]
    palette = {category: _hex(colour) for category, colour in zip(others, _distinct_colours(len(others)), strict=True)}
    palette.update(dict.fromkeys(control_categories, CONTROL_COLOR))
    return palette


def _distinct_colours(n: int) -> list:
    """``n`` colours that stay distinguishable from each other and from :data:`CONTROL_COLOR`."""
    from matplotlib import colormaps

    if n <= 9:
        return [colour for i, colour in enumerate(colormaps["tab10"].colors) if i != 3][:n]
    if n <= 18:
        return [colour for i, colour in enumerate(colormaps["tab20"].colors) if i not in (6, 7)][:n]
    return [colormaps["nipy_spectral"](0.05 + 0.9 * i / (n - 1)) for i in range(n)]


def _hex(rgba: Sequence[float]) -> str:
    from matplotlib.colors import to_hex

    return to_hex(rgba)


def umap(
    adata: AnnData,
    basis: str | Sequence[str],
    color: str | Sequence[str],
    *,
    control_key: str | None = None,
    titles: str | Sequence[str] | None = None,
    key_added: str | Sequence[str] | None = None,
    n_neighbors: int = 15,
    random_state: int = 0,
    point_size: float | None = None,
    panel_size: float = 3.5,
    show: bool | None = None,
    save: str | None = None,
    return_fig: bool = False,
) -> Figure | None:
    """Draw a grid of UMAPs: one column per embedding, one row per colouring.

    The layout of the CellPainTR paper's Figures 4 and 7: methods side by side, coloured by source (batch effects)
    and by mechanism of action (biology), with negative controls in one fixed colour. The grid makes its own
    figure, so unlike single-panel plots it takes no ``ax`` (as scanpy's multi-panel plots do not use one).

    Parameters
    ----------
    adata
        Annotated data matrix holding the embeddings.
    basis
        ``.obsm`` key of an embedding, or a list of them, to compare (``"X"`` for the features), one column each.
    color
        ``.obs`` column, or a list of them, to colour by, one row each.
    control_key
        Boolean ``.obs`` column marking negative controls, read as ``cpembed.pp`` and ``cpembed.bm`` read it (a
        column of other values, such as the strings ``"True"`` and ``"False"``, is an error). Categories that only
        control wells carry (``"DMSO"``) are drawn in :data:`CONTROL_COLOR` in every row.
    titles
        Column titles; default: the basis names.
    key_added
        ``None`` (default): the UMAPs are computed for the figure and nothing of ``adata`` changes. Otherwise the
        ``.obsm`` key of each basis's UMAP, one per basis (e.g. ``"X_pca_umap"``): a UMAP stored there by an earlier
        call is reused if what it was computed from still matches, else it is computed and stored, with its record
        (``{"params": {"basis", "n_neighbors", "random_state"}, "checksum": <of the basis values>}``) in
        ``adata.uns["cpe_umap"][<key>]``. Those two entries are the only things this function writes; an ``.obsm``
        key it did not write (e.g. scanpy's ``X_umap``) is never read nor overwritten.
    n_neighbors, random_state
        Passed to the UMAP of each embedding that has no matching stored UMAP (scanpy's neighbours and layout).
    point_size
        Marker size; default scales with the number of wells.
    panel_size
        Width and height of one panel, in inches.
    show
        Show the figure (default: when neither ``save`` nor ``return_fig`` is set).
    save
        Path to save the figure to.
    return_fig
        Return the :class:`~matplotlib.figure.Figure`.

    Returns
    -------
    The figure if ``return_fig`` is true, else ``None``.
    """
    import matplotlib.pyplot as plt

    basis, color = _as_list(basis), _as_list(color)
    if not basis or not color:
        raise ValueError("Pass at least one embedding in `basis` and one obs column in `color`.")
    check_obsm_keys(adata, *basis)
    check_obs_keys(adata, *color, control_key)
    is_control = None if control_key is None else control_flags(adata, control_key)
    titles = _as_list(titles) if titles is not None else basis
    if len(titles) != len(basis):
        raise ValueError(f"Got {len(titles)} titles for {len(basis)} embeddings.")
    keys = [None] * len(basis) if key_added is None else _as_list(key_added)
    if len(keys) != len(basis):
        raise ValueError(f"Got {len(keys)} keys in key_added for {len(basis)} embeddings: pass one per basis.")
    coordinates = {}
    for name, key in zip(basis, keys, strict=True):  # a loop, not a comprehension, so that warnings point at the caller
        data = _basis_matrix(adata, name)
        settings = {"n_neighbors": n_neighbors, "random_state": random_state}
        if key is None:
            coordinates[name] = _umap_of(data, **settings)
        else:
            coordinates[name] = _stored_umap(adata, data, name, key, **settings)

    size = point_size if point_size is not None else max(120_000 / adata.n_obs, 2.0) / 10
    fig, axes = plt.subplots(
        len(color), len(basis), figsize=(panel_size * len(basis) + 2.5, panel_size * len(color)), squeeze=False
    )
    for row, column in enumerate(color):
        palette = _palette(adata, column, is_control)
        values = adata.obs[column].astype(str).to_numpy()
        # Draw controls last so they stay visible on top of the perturbations.
        order = np.argsort(np.array([palette[value] == CONTROL_COLOR for value in values]), kind="stable")
        for col, name in enumerate(basis):
            ax = axes[row, col]
            xy = coordinates[name][order]
            ax.scatter(xy[:, 0], xy[:, 1], c=[palette[v] for v in values[order]], s=size, linewidths=0, rasterized=True)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(titles[col])
            if col == 0:
                ax.set_ylabel(column)
        _legend(axes[row, -1], palette)
    fig.tight_layout()
    return finish_figure(fig, show=show, save=save, return_fig=return_fig)


def _as_list(names: str | Sequence[str]) -> list[str]:
    """One name or a sequence of them, as a list."""
    return [names] if isinstance(names, str) else list(names)


def _stored_umap(
    adata: AnnData, data: np.ndarray, basis: str, key: str, *, n_neighbors: int, random_state: int
) -> np.ndarray:
    """The UMAP of ``basis`` from ``adata.obsm[key]`` if its record matches ``data``, else a new one stored there.

    A new one is stored when the key is free or was written here; a key written by anything else is left alone.
    """
    record = _record(data, basis, n_neighbors, random_state)
    records = adata.uns.get(RECORD_KEY, {})
    owned = key in records
    if key in adata.obsm and owned and _as_plain(records[key]) == record:
        return np.asarray(adata.obsm[key])
    coordinates = _umap_of(data, n_neighbors=n_neighbors, random_state=random_state)
    if key in adata.obsm and not owned:
        warnings.warn(
            f"adata.obsm[{key!r}] was not written by cpembed.pl.umap, so it is neither shown nor replaced: the UMAP "
            f"of {basis!r} was computed afresh and not stored. Pass another key_added to store it.",
            UserWarning,
            stacklevel=3,
        )
        return coordinates
    adata.obsm[key] = coordinates
    adata.uns[RECORD_KEY] = {**records, key: record}
    logger.info("added UMAP of %r in adata.obsm[%r] and its record in adata.uns[%r]", basis, key, RECORD_KEY)
    return coordinates


def _as_plain(record) -> dict:
    """A record as nested plain dicts (an ``.h5ad`` round trip may return other mappings)."""
    return {name: _as_plain(value) if hasattr(value, "items") else value for name, value in record.items()}


def _legend(ax, palette: dict[str, str], max_entries: int = 20) -> None:
    from matplotlib.lines import Line2D

    entries = list(palette.items())
    shown = [entry for entry in entries if entry[1] == CONTROL_COLOR] + [e for e in entries if e[1] != CONTROL_COLOR]
    handles = [
        Line2D([], [], marker="o", linestyle="", color=colour, label=label) for label, colour in shown[:max_entries]
    ]
    if len(entries) > max_entries:
        handles.append(Line2D([], [], linestyle="", label=f"... {len(entries) - max_entries} more"))
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False, fontsize="small")
