"""Write CellPainTR embeddings to ``.obsm``."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

import pandas as pd
from anndata import AnnData

from cpembed._validation import check_layer, check_obs_keys, get_finite_matrix

from ._common import check_batch_labels, store_embedding

if TYPE_CHECKING:
    from cpembed.model import CellPainTR

logger = logging.getLogger(__name__)

STAGES = (1, 2, 3)

#: Architecture of each preset (``model_kwargs`` override it).
PRESET_ARCHITECTURES: dict[str, dict[str, object]] = {
    "contrastive": {"readout": "cls", "linear_path": False},
    "anchored": {"readout": "mean", "linear_path": True},
    "paper": {"readout": "cls", "linear_path": False},
}

#: What the ``"anchored"`` preset adds where the negative controls are known (``control_key``): a projection whitened
#: by the controls' covariance, 28 dimensions wide. On BBBC021, of the widths 16 to 64, 28 gave the largest sum of
#: the leak-free Overall and NSCB margins over PCA-50, averaged over the paper's preprocessing and
#: :func:`cpembed.pp.recipe_jump`, on twelve seeds, and again on 24 fresh ones (``docs/benchmarks.md``). Pass
#: ``model_kwargs={"n_latent": ...}`` for another width (data with many more MoAs may need a wider one).
ANCHORED_WITH_CONTROLS: dict[str, object] = {"projection": "control_whitened", "n_latent": 28}


def cellpaintr(
    adata: AnnData,
    batch_key: str | None = "source",
    labels_key: str | None = None,
    *,
    layer: str | None = None,
    unlabeled_category: str | None = None,
    control_key: str | None = None,
    preset: Literal["auto", "contrastive", "anchored", "paper"] = "auto",
    model: CellPainTR | None = None,
    model_kwargs: dict | None = None,
    key_added: str = "X_cellpaintr",
    stage_embeddings: bool = False,
    channel_aliases: Mapping[str, str] | None = None,
    copy: bool = False,
    **train_kwargs,
) -> AnnData | None:
    """Embed wells with CellPainTR (Pham et al., 2025), training a model unless one is given.

    Trains :class:`cpembed.model.CellPainTR` through its three stages (masked-feature pretraining, intra-source
    and inter-source contrastive fine-tuning) on ``adata`` and writes the final embedding. Features should be
    preprocessed with :mod:`cpembed.pp` first (per-plate robust normalisation to controls, then quantile
    clipping), as the paper does.

    Parameters
    ----------
    adata
        Wells x features, in memory (for a backed ``.h5ad`` use :class:`cpembed.model.CellPainTR` directly).
    batch_key
        ``.obs`` column of the source (lab or batch) of each well.
    labels_key
        ``.obs`` column of the label whose wells are positives of each other in stages 2-3 (compound).
    layer
        Layer holding the features; ``None`` uses ``adata.X``.
    unlabeled_category
        Value of ``labels_key`` marking wells used in stage 1 only.
    control_key
        Boolean ``.obs`` column, ``True`` for the negative controls. With it the ``"anchored"`` preset whitens its
        projection by the controls' covariance (``projection="control_whitened"``) and embeds in 28 dimensions
        (``model_kwargs={"n_latent": ...}`` sets another width): on BBBC021 this lifts both Overall and NSCB above
        PCA's over leak-free seeds (``docs/benchmarks.md``). Without it the preset starts from a plain PCA as wide as
        the model.
    preset
        ``"contrastive"``: the paper's three stages plus a term that keeps the neighbourhoods of a PCA of the profiles
        while the contrastive loss aligns compounds across sources (:data:`~cpembed.model.CONTRASTIVE_STAGES`);
        ``"anchored"``: an embedding that is the PCA projection plus a correction trained to align replicates, which
        stays close to PCA (:data:`~cpembed.model.ANCHORED_STAGES`); ``"paper"``: the paper's CellPainTR
        (:data:`~cpembed.model.PAPER_STAGES`). ``"auto"`` takes ``"contrastive"`` when at least two labels (the
        controls and a compound, say) have wells in two or more sources, else ``"anchored"``: without compounds
        shared across sources the contrastive stages can only separate compounds, which costs mechanism-of-action
        structure. ``docs/concepts.md`` gives the measurements behind each choice.
    model
        A trained model to embed with instead of training one (from :func:`train_cellpaintr`, or
        :meth:`~cpembed.model.CellPainTR.load`); its setup (keys, layer) is used. ``adata`` may be another study:
        wells of sources the model does not know are embedded with its unknown-source token (with a warning), and
        its features may differ from the model's (another CellProfiler pipeline): they are matched by name, then by
        identity (:func:`cpembed.io.match_features`), the model's features it lacks are masked and the others
        ignored; ``.uns[key_added]["features"]`` records the counts.
    model_kwargs
        Architecture passed to :class:`~cpembed.model.CellPainTR` (``d_model``, ``n_layers``, ...).
    key_added
        ``.obsm`` key of the embedding and ``.uns`` key of the parameters.
    stage_embeddings
        Also write the embeddings of the stage snapshots, ``{key_added}_stage1`` ... ``_stage3`` (the paper's
        CellPainTR(1), CellPainTR(2) and the model after stage 3).
    channel_aliases
        With ``model``: channel names read as others when matching features (:func:`cpembed.io.match_features`).
    copy
        Return a new AnnData instead of writing to ``adata``.
    **train_kwargs
        Passed to :meth:`cpembed.model.CellPainTR.train` (``stage1=...``, ``accelerator``, ...).

    Returns
    -------
    With ``copy=True`` the new AnnData, else ``None``. Writes ``adata.obsm[key_added]`` (wells x the embedding's
    dimensions), the stage embeddings on request, ``adata.uns[key_added]["params"]`` and
    ``adata.uns[key_added]["features"]`` (features ``"matched"``, ``"by_identity"``, ``"missing"`` and ``"unknown"``,
    counted against the model's).

    Raises
    ------
    ValueError
        When the features hold NaN or infinite values, or ``batch_key`` has missing labels, before any training.
    """
    if model is not None and train_kwargs:
        raise ValueError(f"A trained model was given; training arguments {sorted(train_kwargs)} would be ignored.")
    if model is None:
        model = train_cellpaintr(
            adata,
            batch_key,
            labels_key,
            layer=layer,
            unlabeled_category=unlabeled_category,
            control_key=control_key,
            preset=preset,
            model_kwargs=model_kwargs,
            **train_kwargs,
        )
    else:
        get_finite_matrix(adata, layer=model.registry_["setup_args"]["layer"])
    features = model.feature_match(adata, channel_aliases)
    stage_latents = {}
    if stage_embeddings:
        for stage in STAGES:
            if stage in model.stage_states_:
                stage_latents[f"{key_added}_stage{stage}"] = model.get_latent_representation(
                    adata, stage=stage, features=features
                )
    architecture = {
        name: model.init_params_["non_kwargs"].get(name)
        for name in ("readout", "linear_path", "n_latent", "projection")
    }
    params = {**model.registry_["setup_args"], **architecture, "stages": sorted(model.stage_states_)}
    if model.training_preset_ is not None:
        params["preset"] = model.training_preset_
    latent = model.get_latent_representation(adata, features=features)
    return store_embedding(
        adata, latent, key_added, params, copy=copy, extra_obsm=stage_latents, extra_uns={"features": features.counts()}
    )


def train_cellpaintr(
    adata: AnnData,
    batch_key: str | None = "source",
    labels_key: str | None = None,
    *,
    layer: str | None = None,
    unlabeled_category: str | None = None,
    control_key: str | None = None,
    preset: Literal["auto", "contrastive", "anchored", "paper"] = "auto",
    model_kwargs: dict | None = None,
    **train_kwargs,
) -> CellPainTR:
    """Train the CellPainTR that :func:`cellpaintr` would train on ``adata``, and return it.

    Use it to embed other studies with the same model, :func:`cellpaintr` with ``model=``, or to save it
    (:meth:`~cpembed.model.CellPainTR.save`). ``adata`` is not changed.

    Parameters
    ----------
    adata, batch_key, labels_key, layer, unlabeled_category, control_key, preset, model_kwargs, **train_kwargs
        As in :func:`cellpaintr`.

    Returns
    -------
    The trained model.

    Raises
    ------
    ValueError
        When the features hold NaN or infinite values, or ``batch_key`` has missing labels, before any training.
    """
    check_obs_keys(adata, batch_key, labels_key)
    check_layer(adata, layer)
    if batch_key is not None:
        check_batch_labels(adata, batch_key)
    get_finite_matrix(adata, layer=layer)
    model, preset = untrained_model(
        adata, layer, batch_key, labels_key, unlabeled_category, preset, model_kwargs, control_key
    )
    model.train(preset=preset, **train_kwargs)
    return model


def untrained_model(
    adata: AnnData,
    layer: str | None,
    batch_key: str | None,
    labels_key: str | None,
    unlabeled_category: str | None,
    preset: str,
    model_kwargs: dict | None,
    control_key: str | None = None,
) -> tuple[CellPainTR, str]:
    """A CellPainTR built on a :func:`training_view` of ``adata`` with the preset's architecture, and the preset.

    ``"auto"`` is resolved with :func:`auto_preset`; the ``"anchored"`` preset takes ``ANCHORED_WITH_CONTROLS``
    when ``control_key`` is given; ``model_kwargs`` override the preset's architecture.
    """
    from cpembed.model import CellPainTR

    if preset == "auto":
        preset = auto_preset(adata, batch_key, labels_key, unlabeled_category)
        logger.info("preset 'auto' chose %r", preset)
    if preset not in PRESET_ARCHITECTURES:
        raise ValueError(f"preset must be 'auto' or one of {sorted(PRESET_ARCHITECTURES)}, got {preset!r}.")
    architecture = PRESET_ARCHITECTURES[preset]
    if preset == "anchored" and control_key is not None:
        architecture = {**architecture, **ANCHORED_WITH_CONTROLS}
    model = CellPainTR(
        training_view(adata, layer, batch_key, labels_key, unlabeled_category, control_key),
        **{**architecture, **(model_kwargs or {})},
    )
    return model, preset


def auto_preset(
    adata: AnnData, batch_key: str | None, labels_key: str | None, unlabeled_category: str | None
) -> Literal["contrastive", "anchored"]:
    """``"contrastive"`` when at least two labels have wells in two or more sources, else ``"anchored"``.

    Contrastive training aligns sources through the labels they share; a single shared label (usually the negative
    control) gives too little to align with, and then the PCA-anchored model is the safer choice.
    """
    if batch_key is None or labels_key is None:
        return "anchored"
    obs = adata.obs[[batch_key, labels_key]].astype(str)
    if unlabeled_category is not None:
        obs = obs[obs[labels_key] != str(unlabeled_category)]
    sources_per_label = obs.groupby(labels_key)[batch_key].nunique()
    return "contrastive" if int((sources_per_label >= 2).sum()) >= 2 else "anchored"


def training_view(
    adata: AnnData,
    layer: str | None,
    batch_key: str | None,
    labels_key: str | None,
    unlabeled_category: str | None,
    control_key: str | None = None,
) -> AnnData:
    """A registered AnnData sharing ``adata``'s features, so the user's AnnData gets no scvi-tools columns."""
    from cpembed.model import CellPainTR

    keys = list(dict.fromkeys(key for key in (batch_key, labels_key, control_key) if key is not None))
    view = AnnData(
        X=adata.X if layer is None else None,
        obs=adata.obs[keys].copy(),
        var=adata.var.copy(),
        layers={layer: adata.layers[layer]} if layer is not None else None,
    )
    view.obs_names = pd.Index(adata.obs_names)
    CellPainTR.setup_anndata(
        view,
        layer=layer,
        batch_key=batch_key,
        labels_key=labels_key,
        unlabeled_category=unlabeled_category,
        control_key=control_key,
    )
    return view
