"""CWA-MSN: Cross-Well Aligned Masked Siamese Network for Cell Painting images (scvi-tools style)."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData, read_h5ad
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data.fields import CategoricalObsField, NumericalObsField

from .._validation import check_groups_present, check_indices, check_obs_complete, check_obs_keys, control_flags
from ..io._image_store import STORE_UNS_KEY, open_image_store, store_path
from ..module import (
    MaskedSiameseNetwork,
    StoreImages,
    ViewConfig,
    VisionTransformer,
    group_channel_statistics,
    resize_for_inference,
)
from ._cwamsn_data import CrossWellSampler
from ._cwamsn_training import CWAMSNTrainingPlan, Optimisation, PairDataModule
from ._random_state import seeded_torch_random
from ._registration import RegisteredModel, register_fields
from ._save_load import ADATA_FILE, load_model_file, save_model
from ._state import cpu_state_dict
from ._trainer import fit, raise_stopped, training_device

NORMALIZATIONS = ("image", "plate_controls")

#: Registry keys of the fields CWA-MSN registers besides scvi-tools' batch and labels (the perturbation).
WELL_KEY, PLATE_KEY, CONTROL_KEY, IMAGE_INDEX_KEY = "well", "plate", "control", "image_index"

#: Attributes that training changes besides the weights; a failed or interrupted training restores them.
TRAINING_STATE = ("history_", "is_trained_")

#: The ``history_`` entry of the training losses.
HISTORY_KEY = "train"


def _store_shape(path: str) -> tuple[int, ...]:
    with open_image_store(path) as file:
        return file["images"].shape


def _check_plate_control_keys(setup: dict) -> None:
    if None in (setup.get("plate_key"), setup.get("control_key")):
        raise ValueError(
            "normalization='plate_controls' standardises each plate on its negative-control images: pass "
            "`plate_key` and `control_key` to CWAMSN.setup_anndata."
        )


class CWAMSN(RegisteredModel):
    """Cross-Well Aligned Masked Siamese Network (CWA-MSN) on Cell Painting images.

    MSN (Assran et al. 2022) whose anchor and target views come from two different wells that received the same
    perturbation, so the embedding aligns wells across plates and batches (CWA-MSN paper, sections 3.2-3.4).
    Defaults are the paper's: ViT-S/16, 1 random 224 px + 10 focal 96 px anchor views, patch drop 0.15, 1024
    prototypes of dimension 256.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata` (one row per image of the store).
    image_size, patch_size, embed_dim, depth, num_heads, mlp_ratio
        ViT sizes (ViT-S/16: 224, 16, 384, 12, 6, 4).
    hidden_dim, out_dim, n_prototypes
        Projection head and prototypes (MSN: 2048, 256, 1024).
    focal_size, n_focal_views, random_scale, focal_scale
        Views (MSN: 96 px, 10, (0.3, 1.0), (0.05, 0.3)).
    patch_drop
        Share of patch tokens dropped from the large anchor view (paper: 0.15).
    cross_well
        True for CWA-MSN; False for the single-well ablation (plain MSN, anchor and target from one image).
    pool
        Image embedding: ``"cls"`` token (MSN) or ``"mean"`` of patch tokens.
    normalization
        How views are standardised per channel. ``"image"`` (the paper's, after OpenPhenom): each view on its own
        pixels, which removes stain-intensity differences between plates and between perturbations alike.
        ``"plate_controls"``: every image with the pixel mean and standard deviation of the negative-control images
        of its plate, so intensity phenotypes survive while plate-wide gains and offsets are removed; needs
        ``plate_key`` and ``control_key`` in :meth:`setup_anndata` and control images on every plate (at inference
        too).
    seed
        Seed of the weights; :meth:`train` takes its own seed for sampling, crops and patch drops. The caller's random
        state is left untouched.

    Notes
    -----
    Several GPUs: Lightning's DDP via ``model.train(accelerator="gpu", devices=4, strategy="ddp")``; every process
    draws its own share of each epoch's pairs. On one CUDA device the training step is recorded once as a CUDA graph
    and replayed.

    Examples
    --------
    >>> cpe.model.CWAMSN.setup_anndata(images, perturbation_key="Metadata_Perturbation", well_key="Metadata_Well")
    >>> model = cpe.model.CWAMSN(images)
    >>> model.train()
    >>> images.obsm["X_cwamsn"] = model.get_latent_representation()
    """

    _training_plan_cls = CWAMSNTrainingPlan
    _data_module_cls = PairDataModule

    def __init__(
        self,
        adata: AnnData,
        *,
        image_size: int = 224,
        patch_size: int = 16,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        hidden_dim: int = 2048,
        out_dim: int = 256,
        n_prototypes: int = 1024,
        focal_size: int = 96,
        n_focal_views: int = 10,
        random_scale: tuple[float, float] = (0.3, 1.0),
        focal_scale: tuple[float, float] = (0.05, 0.3),
        patch_drop: float = 0.15,
        cross_well: bool = True,
        pool: Literal["cls", "mean"] = "cls",
        normalization: Literal["image", "plate_controls"] = "image",
        seed: int = 0,
    ):
        super().__init__(adata)
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization={normalization!r} is not one of {NORMALIZATIONS}.")
        if normalization == "plate_controls":
            _check_plate_control_keys(self._setup_args)
        n_channels = _store_shape(self._setup_args["image_store"])[1]
        with seeded_torch_random(seed):
            encoder = VisionTransformer(
                n_channels, image_size, patch_size, embed_dim, depth, num_heads, mlp_ratio, pool=pool
            )
            self.module = MaskedSiameseNetwork(encoder, hidden_dim, out_dim, n_prototypes, patch_drop=patch_drop)
        self.views = ViewConfig(image_size, focal_size, n_focal_views, tuple(random_scale), tuple(focal_scale))
        self.history_: dict[str, pd.DataFrame] = {}
        kind = "CWA-MSN (cross-well)" if cross_well else "MSN (single-well)"
        n_params = sum(p.numel() for p in encoder.parameters())
        self._model_summary_string = f"{kind} with a {n_params / 1e6:.2f}M-parameter ViT on {n_channels} channels"
        self.init_params_ = self._get_init_params(locals())

    # ------------------------------------------------------------------ AnnData registration

    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
        perturbation_key: str,
        well_key: str,
        plate_key: str | None = None,
        batch_key: str | None = None,
        control_key: str | None = None,
        image_store: str | Path | None = None,
        **kwargs,
    ) -> None:
        """Register the obs columns and the image store CWA-MSN samples from.

        As in scvi-tools, this adds the columns ``_scvi_labels`` (the perturbation), ``_scvi_batch``, ``_scvi_well``
        and ``_scvi_plate`` to ``adata.obs`` and ``_scvi_uuid`` / ``_scvi_manager_uuid`` to ``adata.uns``; nothing
        else changes. The setup, with the store's path, is recorded in the model's registry and replayed by
        :meth:`load`.

        Parameters
        ----------
        adata
            One row per image (field or tile), with ``obs["image_index"]`` giving its row in the store.
        perturbation_key
            Treatment of each image (cross-well pairs share it; controls count as one perturbation).
        well_key
            Well of each image (anchor and target wells differ). Make it unique across plates.
        plate_key, batch_key
            Plate and batch of each image. Sampling ignores them (pairs may cross plates and batches, as in the
            paper); ``normalization="plate_controls"`` standardises per plate.
        control_key
            Boolean obs column marking negative-control images (needed by ``normalization="plate_controls"``).
        image_store
            HDF5 image store (default: ``adata.uns["image_store"]["path"]``).
        """
        setup_method_args = cls._get_setup_method_args(**locals())
        check_obs_keys(adata, perturbation_key, well_key, plate_key, batch_key, IMAGE_INDEX_KEY)
        path = store_path(adata, image_store)
        n_images = _store_shape(path)[0]
        index = adata.obs[IMAGE_INDEX_KEY].to_numpy()
        if index.min() < 0 or index.max() >= n_images:
            raise ValueError(f"obs['image_index'] must lie in [0, {n_images}), the rows of {path}.")
        check_obs_complete(adata, perturbation_key, well_key, plate_key)
        if control_key is not None:
            control_flags(adata, control_key)
        setup_method_args["setup_args"]["image_store"] = path
        fields = [
            CategoricalObsField(REGISTRY_KEYS.LABELS_KEY, perturbation_key),
            CategoricalObsField(WELL_KEY, well_key),
            CategoricalObsField(PLATE_KEY, plate_key),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
            NumericalObsField(IMAGE_INDEX_KEY, IMAGE_INDEX_KEY),
            NumericalObsField(CONTROL_KEY, control_key, required=False),
        ]
        adata_manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        register_fields(adata_manager, adata, **kwargs)
        cls.register_manager(adata_manager)

    @property
    def _setup_args(self) -> dict:
        return self.registry_["setup_args"]

    @property
    def device(self) -> torch.device:
        """The device of the network's parameters."""
        return next(self.module.parameters()).device

    def _image_store(self, adata: AnnData) -> str:
        """The store the images of ``adata`` are read from: its own, else (with a warning) the training store."""
        if adata is self.adata:
            return self._setup_args["image_store"]
        return _store_of(adata, self._setup_args["image_store"])

    def _channel_statistics(self, adata: AnnData, images: StoreImages) -> np.ndarray | None:
        """Channel statistics to standardise each row of the store ``images`` with (``None``: per view).

        With ``normalization="plate_controls"``: a ``(n_store_rows, 2, channels)`` float32 array holding, for every
        image of ``adata``, the pixel mean and standard deviation of its plate's negative-control images (the plate
        and control columns of the model's setup).
        """
        if self.init_params_["non_kwargs"]["normalization"] == "image":
            return None
        setup = self._setup_args
        check_obs_keys(adata, setup["plate_key"])
        plates = adata.obs[setup["plate_key"]].astype(str).to_numpy()
        is_control = control_flags(adata, setup["control_key"])
        check_groups_present(
            plates[is_control],
            np.unique(plates),
            "plates have no negative-control images to standardise them with (normalization='plate_controls')",
        )
        rows = adata.obs[IMAGE_INDEX_KEY].to_numpy()
        labels, stats = group_channel_statistics(images, rows[is_control], plates[is_control])
        table = np.full((images.dataset.shape[0], *stats.shape[1:]), np.nan, dtype=np.float32)
        table[rows] = stats[np.searchsorted(labels, plates)]
        return table

    # ------------------------------------------------------------------ training

    def train(
        self,
        max_epochs: int = 100,
        batch_size: int = 64,
        steps_per_epoch: int | None = None,
        *,
        start_lr: float = 2e-4,
        lr: float = 1e-3,
        final_lr: float = 1e-6,
        warmup_epochs: float = 15,
        weight_decay: tuple[float, float] = (0.04, 0.4),
        ema_momentum: tuple[float, float] = (0.996, 1.0),
        clip_grad: float = 3.0,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        num_workers: int = 0,
        cuda_graph: bool = True,
        seed: int | None = None,
        **trainer_kwargs,
    ) -> None:
        """Train with AdamW and MSN's per-iteration schedules (a Lightning run of :class:`CWAMSNTrainingPlan`).

        Parameters
        ----------
        max_epochs, batch_size
            Paper: 100 epochs, batch 64 (per process under DDP).
        steps_per_epoch
            Iterations per epoch, shared among the processes (default: number of images // batch_size, at least 1).
        start_lr, lr, final_lr, warmup_epochs
            Linear warm-up from ``start_lr`` (paper: 2e-4) to ``lr`` over ``warmup_epochs`` (paper: 15), then cosine
            decay to ``final_lr`` (MSN ViT-S config: 1e-3 peak, 1e-6 final).
        weight_decay, ema_momentum
            Start and end of the cosine weight decay (0.04 -> 0.4) and linear EMA momentum (0.996 -> 1.0).
        clip_grad
            Gradient norm clipping (MSN: 3.0).
        accelerator, devices
            Lightning's names: ``"auto"`` (CUDA when available), ``"cpu"``, ``"gpu"`` / ``"cuda"``; ``devices="auto"``
            is one device. On CUDA the step runs under bf16 autocast.
        num_workers
            Data-loader processes reading the store.
        cuda_graph
            On one CUDA device, record the training step once as a CUDA graph and replay it (see
            :class:`cpembed.module.MSNTrainingStep`): the same computation with far less host work per step.
        seed
            Seed of the pair sampling, crops and patch drops; default the model's ``seed``.
        **trainer_kwargs
            Passed to :class:`scvi.train.Trainer` (and on to Lightning), e.g. ``strategy``, ``enable_progress_bar``.
        """
        accelerator, devices, device = training_device(accelerator, devices)
        seed = self.init_params_["non_kwargs"]["seed"] if seed is None else seed
        setup = self._setup_args
        obs = self.adata.obs
        sampler = CrossWellSampler(
            obs[setup["perturbation_key"]].astype(str).to_numpy(),
            obs[setup["well_key"]].astype(str).to_numpy(),
            obs[IMAGE_INDEX_KEY].to_numpy(),
            cross_well=self.init_params_["non_kwargs"]["cross_well"],
        )
        data = self._data_module_cls(
            setup["image_store"],
            sampler,
            batch_size,
            steps_per_epoch or max(1, self.adata.n_obs // batch_size),
            seed,
            num_workers,
        )
        optimisation = Optimisation(
            start_lr, lr, final_lr, warmup_epochs, tuple(weight_decay), tuple(ema_momentum), clip_grad, cuda_graph
        )
        channel_stats = self._channel_statistics(self.adata, StoreImages(setup["image_store"]))
        plan = self._training_plan_cls(self.module, self.views, optimisation, channel_stats)
        with self._restored_on_failure(), seeded_torch_random(seed, cuda=device.type == "cuda"):
            self.module.train()
            fit(plan, data, max_epochs=max_epochs, accelerator=accelerator, devices=devices, **trainer_kwargs)
            self._record(plan.epoch_losses)
            self.is_trained_ = True
        self.module.eval()
        self.to_device(device)

    def _record(self, epoch_losses: list[dict[str, float]]) -> None:
        """Append the epochs of a run to ``history_[HISTORY_KEY]`` (epochs numbered on from earlier runs)."""
        earlier = self.history_.get(HISTORY_KEY)
        table = pd.concat([earlier, pd.DataFrame(epoch_losses)]) if earlier is not None else pd.DataFrame(epoch_losses)
        self.history_ = {**self.history_, HISTORY_KEY: table.reset_index(drop=True).rename_axis("epoch")}

    @contextmanager
    def _restored_on_failure(self) -> Iterator[None]:
        """Run the block; when it fails or is interrupted (Ctrl-C), restore weights and history, then re-raise.

        A training stopped part-way thus leaves the model as it was before :meth:`train`, not half-trained.
        """
        saved_state, device = cpu_state_dict(self.module), self.device
        saved_attributes = {name: copy.deepcopy(getattr(self, name)) for name in TRAINING_STATE}
        try:
            yield
        except BaseException as error:
            with torch.no_grad():
                self.module.load_state_dict(saved_state)
            self.module.to(device).eval()
            for name, value in saved_attributes.items():
                setattr(self, name, value)
            raise_stopped(error, "CWA-MSN")

    # ------------------------------------------------------------------ embeddings

    def get_latent_representation(
        self, adata: AnnData | None = None, indices: Sequence[int] | None = None, batch_size: int | None = None
    ) -> np.ndarray:
        """Embed images (rows) with the EMA target encoder, head dropped, whole image resized to ``image_size``.

        Parameters
        ----------
        adata
            Images to embed, with ``obs["image_index"]`` (default: the training AnnData). They are read from the
            store ``adata`` records (else, with a warning, from the training store) and, with
            ``normalization="plate_controls"``, standardised on the controls of their own plates (the plate and
            control columns of the model's setup). Nothing is written to ``adata``.
        indices
            Rows of ``adata`` to embed (positions in ``[0, n_obs)``); default all.
        batch_size
            Images per forward pass; default 256.

        Returns
        -------
        Embeddings, images x ``embed_dim``, float32.
        """
        adata = self.adata if adata is None else adata
        check_obs_keys(adata, IMAGE_INDEX_KEY)
        positions = check_indices(indices, adata.n_obs)
        store = self._image_store(adata)
        n_channels, expected = _store_shape(store)[1], self.module.encoder.patch_embed.in_channels
        if n_channels != expected:
            raise ValueError(f"The image store has {n_channels} channels; the model was trained on {expected}.")
        images = StoreImages(store)
        channel_stats = self._channel_statistics(adata, images)
        rows = adata.obs[IMAGE_INDEX_KEY].to_numpy()[positions]
        device = self.device
        batch_size = batch_size or 256
        self.module.eval()
        out = np.empty((len(rows), self.module.encoder.embed_dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(rows), batch_size):
                batch_rows = rows[start : start + batch_size]
                batch = torch.from_numpy(images.read(batch_rows)).to(device)
                stats = None if channel_stats is None else torch.from_numpy(channel_stats[batch_rows]).to(device)
                views = resize_for_inference(batch, self.views.image_size, stats)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    out[start : start + len(batch_rows)] = self.module.embed(views).float().cpu().numpy()
        return out

    # ------------------------------------------------------------------ saving

    def save(
        self,
        dir_path: str | Path,
        prefix: str | None = None,
        overwrite: bool = False,
        save_anndata: bool = False,
        **anndata_write_kwargs,
    ) -> None:
        """Save the model in scvi-tools' file layout, loadable with ``torch.load(..., weights_only=True)``.

        The folder is written whole or not at all (see :func:`cpembed.model._save_load.save_model`).

        Parameters
        ----------
        dir_path
            Folder to write.
        prefix
            File name prefix.
        overwrite
            Replace an existing ``dir_path``; it must then hold saved models only, as it is replaced as a whole.
        save_anndata
            Also write the training AnnData (``<prefix>adata.h5ad``).
        **anndata_write_kwargs
            Passed to :meth:`anndata.AnnData.write_h5ad`.
        """
        save_model(self, dir_path, prefix, overwrite, save_anndata, **anndata_write_kwargs)

    @classmethod
    def load(
        cls,
        dir_path: str | Path,
        adata: AnnData | None = None,
        accelerator: str = "auto",
        device: int | str = "auto",
        prefix: str | None = None,
    ) -> CWAMSN:
        """Load a saved model, attached to ``adata`` or to the AnnData saved with it.

        ``adata`` is set up with the saved keys (which adds the ``_scvi_*`` registration entries, as
        :meth:`setup_anndata` does) and its own image store (``adata.uns["image_store"]``); only when it records
        none are its images read from the training store, with a warning.

        Parameters
        ----------
        dir_path
            Folder written by :meth:`save`.
        adata
            Images to attach (default: the AnnData saved with the model, ``save(..., save_anndata=True)``).
        accelerator, device
            Lightning's accelerator name and device index of the device to load onto.
        prefix
            File name prefix used when saving.
        """
        content = load_model_file(dir_path, prefix, cls.__name__)
        attributes = content["attr_dict"]
        registry = attributes.pop("registry_")
        setup_args = dict(registry["setup_args"])
        if adata is None:
            saved = Path(dir_path) / f"{prefix or ''}{ADATA_FILE}"
            if not saved.is_file():
                raise ValueError(
                    f"{dir_path} holds no AnnData (the model was saved without save_anndata=True): pass the images "
                    f"to attach, CWAMSN.load({str(dir_path)!r}, adata=...)."
                )
            adata = read_h5ad(saved)
        setup_args["image_store"] = _store_of(adata, setup_args["image_store"])
        cls.setup_anndata(adata, **setup_args)
        init_params = attributes.pop("init_params_")
        model = cls(adata, **init_params["non_kwargs"])
        model.module.load_state_dict(content["model_state_dict"])
        for name, value in attributes.items():
            setattr(model, name, value)
        model.to_device(training_device(accelerator, device)[2])
        model.module.eval()
        return model


def _store_of(adata: AnnData, training_store: str) -> str:
    """The image store ``adata`` records, else (with a warning) ``training_store``."""
    if STORE_UNS_KEY in adata.uns:
        return store_path(adata, None)
    warnings.warn(
        f"adata records no image store (adata.uns['image_store']); its images are read from the training store "
        f"{training_store}.",
        stacklevel=3,
    )
    return training_store
