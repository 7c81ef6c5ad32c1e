"""``cpembed.tl.cwamsn``: train CWA-MSN on an image AnnData and write per-image embeddings to ``.obsm``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from anndata import AnnData


def cwamsn(
    adata: AnnData,
    perturbation_key: str,
    well_key: str,
    *,
    plate_key: str | None = None,
    batch_key: str | None = None,
    control_key: str | None = None,
    image_store: str | Path | None = None,
    cross_well: bool = True,
    normalization: str = "image",
    max_epochs: int = 100,
    batch_size: int = 64,
    model_kwargs: dict[str, Any] | None = None,
    train_kwargs: dict[str, Any] | None = None,
    key_added: str = "X_cwamsn",
    copy: bool = False,
) -> AnnData | None:
    """Embed Cell Painting images with CWA-MSN (cross-well aligned masked siamese network).

    Trains :class:`cpembed.model.CWAMSN` on the images of ``adata`` (one row per field or tile, rows of an image
    store built by :func:`cpembed.io.build_image_store` or :func:`cpembed.datasets.simulate_images`), then embeds
    every row with the EMA encoder. Aggregate to wells with :func:`cpembed.pp.aggregate`.

    Parameters
    ----------
    adata
        Image AnnData with ``obs["image_index"]`` and ``uns["image_store"]`` (or pass ``image_store``).
    perturbation_key, well_key
        obs columns of the treatment and of the (plate-unique) well.
    plate_key, batch_key
        Plate and batch of each image (recorded with the model; ``plate_key`` is needed by
        ``normalization="plate_controls"``).
    control_key
        Boolean obs column marking negative-control images.
    image_store
        HDF5 image store (default: ``adata.uns["image_store"]["path"]``).
    cross_well
        False trains the single-well ablation (plain MSN).
    normalization
        ``"image"``: standardise every view per channel on its own pixels (the paper's). ``"plate_controls"``:
        standardise every image with its plate's negative-control images, which keeps intensity phenotypes (needs
        ``plate_key`` and ``control_key``; see :class:`~cpembed.model.CWAMSN`).
    max_epochs, batch_size
        Paper: 100 epochs, batch 64.
    model_kwargs, train_kwargs
        Extra arguments of :class:`~cpembed.model.CWAMSN` (sizes, views, seed) and of its ``train``.
    key_added
        obsm key of the embedding; parameters go to ``uns[key_added]["params"]``.
    copy
        Return a new AnnData instead of writing into ``adata``.

    Returns
    -------
    None, or the new AnnData when ``copy=True``. Writes ``obsm[key_added]`` (``n_obs x embed_dim``) and
    ``uns[key_added]["params"]``; the training setup is kept in ``uns["_cwamsn_setup"]``.
    """
    from ..model import CWAMSN

    adata = adata.copy() if copy else adata
    CWAMSN.setup_anndata(
        adata,
        perturbation_key,
        well_key,
        plate_key=plate_key,
        batch_key=batch_key,
        control_key=control_key,
        image_store=image_store,
    )
    model = CWAMSN(adata, cross_well=cross_well, normalization=normalization, **(model_kwargs or {}))
    model.train(max_epochs=max_epochs, batch_size=batch_size, **(train_kwargs or {}))
    adata.obsm[key_added] = model.get_latent_representation(adata)
    adata.uns[key_added] = {
        "params": {
            "perturbation_key": perturbation_key,
            "well_key": well_key,
            "cross_well": cross_well,
            "max_epochs": max_epochs,
            "batch_size": batch_size,
            "final_loss": model.history_["loss"][-1],
            **{k: v for k, v in model.init_params_.items() if isinstance(v, int | float | str | bool)},
        }
    }
    return adata if copy else None
