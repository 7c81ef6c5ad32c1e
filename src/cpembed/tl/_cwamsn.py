"""``cpembed.tl.cwamsn``: train CWA-MSN on an image AnnData and write per-image embeddings to ``.obsm``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ._common import store_embedding

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
    normalization: Literal["image", "plate_controls"] = "image",
    model_kwargs: dict[str, Any] | None = None,
    key_added: str = "X_cwamsn",
    copy: bool = False,
    **train_kwargs,
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
    model_kwargs
        Extra arguments of :class:`~cpembed.model.CWAMSN` (sizes, views, seed).
    key_added
        obsm key of the embedding; parameters go to ``uns[key_added]["params"]``.
    copy
        Return a new AnnData instead of writing into ``adata``.
    **train_kwargs
        Passed to :meth:`cpembed.model.CWAMSN.train` (``max_epochs``, ``batch_size``, ``accelerator``, ...).

    Returns
    -------
    None, or the new AnnData when ``copy=True``. Writes ``obsm[key_added]`` (``n_obs x embed_dim``) and
    ``uns[key_added]["params"]`` (the setup, the architecture and the final training loss); nothing else of
    ``adata`` changes.
    """
    from anndata import AnnData

    from ..io._image_store import STORE_UNS_KEY
    from ..model import CWAMSN
    from ..model._cwamsn import HISTORY_KEY, IMAGE_INDEX_KEY

    keys = (perturbation_key, well_key, plate_key, batch_key, control_key, IMAGE_INDEX_KEY)
    # The model is set up on a view of its own (scvi-tools adds columns), so the user's AnnData gains only results.
    view = AnnData(
        obs=adata.obs[[key for key in keys if key in adata.obs]].copy(),
        uns={key: adata.uns[key] for key in (STORE_UNS_KEY,) if key in adata.uns},
    )
    CWAMSN.setup_anndata(
        view,
        perturbation_key,
        well_key,
        plate_key=plate_key,
        batch_key=batch_key,
        control_key=control_key,
        image_store=image_store,
    )
    model = CWAMSN(view, cross_well=cross_well, normalization=normalization, **(model_kwargs or {}))
    model.train(**train_kwargs)
    architecture = {k: v for k, v in model.init_params_["non_kwargs"].items() if isinstance(v, int | float | str)}
    params = {
        **{k: v for k, v in model.registry_["setup_args"].items() if v is not None},
        **architecture,
        **{k: v for k, v in train_kwargs.items() if isinstance(v, int | float | str)},
        "final_loss": float(model.history_[HISTORY_KEY]["loss"].iloc[-1]),
    }
    return store_embedding(adata, model.get_latent_representation(), key_added, params, copy=copy)
