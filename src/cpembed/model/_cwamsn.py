"""CWA-MSN: Cross-Well Aligned Masked Siamese Network for Cell Painting images.

The model follows scvi-tools conventions (``setup_anndata``, ``train``, ``get_latent_representation``,
``save``/``load``, ``history_``) but does not subclass scvi-tools' ``BaseModelClass``: its data machinery
(``AnnDataManager`` fields and ``AnnDataLoader``) serves rows of ``adata.X``, while CWA-MSN streams pairs of images
from two different wells out of an HDF5 image store. Training is a plain PyTorch loop with a tqdm progress bar.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._files import replacing
from .._validation import check_groups_present, check_obs_complete, check_obs_keys, control_flags
from ..io._image_store import open_image_store, store_path
from ._random_state import seeded_torch_random
from ._state import cpu_state_dict

if TYPE_CHECKING:
    from anndata import AnnData

    from ..module import StoreImages

SETUP_UNS_KEY = "_cwamsn_setup"
MODEL_FILE = "model.pt"
NORMALIZATIONS = ("image", "plate_controls")


def _store_shape(path: str) -> tuple[int, ...]:
    with open_image_store(path) as file:
        return file["images"].shape


def _check_plate_control_keys(setup: dict[str, Any]) -> None:
    if None in (setup.get("plate_key"), setup.get("control_key")):
        raise ValueError(
            "normalization='plate_controls' standardises each plate on its negative-control images: pass "
            "`plate_key` and `control_key` to CWAMSN.setup_anndata."
        )


class CWAMSN:
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
        Seed of the weights and of the sampling.
    """

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
        pool: str = "cls",
        normalization: str = "image",
        seed: int = 0,
    ):
        self.init_params_ = {key: value for key, value in locals().items() if key not in {"self", "adata"}}

        from ..module import MaskedSiameseNetwork, ViewConfig, VisionTransformer

        self.setup_args_ = self._registered_setup(adata)
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization={normalization!r} is not one of {NORMALIZATIONS}.")
        if normalization == "plate_controls":
            _check_plate_control_keys(self.setup_args_)
        self.adata = adata
        n_channels = _store_shape(self.setup_args_["image_store"])[1]
        with seeded_torch_random(seed):
            encoder = VisionTransformer(
                n_channels, image_size, patch_size, embed_dim, depth, num_heads, mlp_ratio, pool=pool
            )
            self.module = MaskedSiameseNetwork(encoder, hidden_dim, out_dim, n_prototypes, patch_drop=patch_drop)
        self.views = ViewConfig(image_size, focal_size, n_focal_views, tuple(random_scale), tuple(focal_scale))
        self.is_trained_ = False
        self.history_: dict[str, list[float]] = {"loss": []}

    # ------------------------------------------------------------------ setup
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
    ) -> None:
        """Register the obs columns and image store CWA-MSN samples from.

        Writes only ``adata.uns["_cwamsn_setup"]`` (the arguments, replayed by :meth:`load`).

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
        check_obs_keys(adata, perturbation_key, well_key, plate_key, batch_key, "image_index")
        path = store_path(adata, image_store)
        n_images = _store_shape(path)[0]
        index = adata.obs["image_index"].to_numpy()
        if index.min() < 0 or index.max() >= n_images:
            raise ValueError(f"obs['image_index'] must lie in [0, {n_images}), the rows of {path}.")
        check_obs_complete(adata, perturbation_key, well_key, plate_key)
        if control_key is not None:
            control_flags(adata, control_key)
        adata.uns[SETUP_UNS_KEY] = {
            "perturbation_key": perturbation_key,
            "well_key": well_key,
            "plate_key": plate_key,
            "batch_key": batch_key,
            "control_key": control_key,
            "image_store": path,
        }

    @staticmethod
    def _registered_setup(adata: AnnData) -> dict[str, Any]:
        if SETUP_UNS_KEY not in adata.uns:
            raise ValueError("Call CWAMSN.setup_anndata(adata, perturbation_key=..., well_key=...) first.")
        return {key: value for key, value in dict(adata.uns[SETUP_UNS_KEY]).items()}

    def _sampler(self, adata: AnnData):
        from ..module import CrossWellSampler

        obs = adata.obs
        return CrossWellSampler(
            obs[self.setup_args_["perturbation_key"]].astype(str).to_numpy(),
            obs[self.setup_args_["well_key"]].astype(str).to_numpy(),
            obs["image_index"].to_numpy(),
            cross_well=self.init_params_["cross_well"],
        )

    def _channel_statistics(self, adata: AnnData, images: StoreImages, setup: dict[str, Any]):
        """Channel statistics to standardise each row of the store ``images`` with (``None``: per view).

        With ``normalization="plate_controls"``: a ``(n_store_rows, 2, channels)`` float32 array holding, for every
        image of ``adata`` (registered with ``setup``), the pixel mean and standard deviation of its plate's
        negative-control images.
        """
        if self.init_params_["normalization"] == "image":
            return None
        from ..module import group_channel_statistics

        _check_plate_control_keys(setup)
        plates = adata.obs[setup["plate_key"]].astype(str).to_numpy()
        is_control = control_flags(adata, setup["control_key"])
        check_groups_present(
            plates[is_control],
            np.unique(plates),
            "plates have no negative-control images to standardise them with (normalization='plate_controls')",
        )
        rows = adata.obs["image_index"].to_numpy()
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
        num_workers: int = 0,
        cuda_graph: bool = True,
        progress_bar: bool = True,
    ) -> None:
        """Train with AdamW and MSN's per-iteration schedules.

        Parameters
        ----------
        max_epochs, batch_size
            Paper: 100 epochs, batch 64.
        steps_per_epoch
            Iterations per epoch (default: number of images // batch_size, at least 1).
        start_lr, lr, final_lr, warmup_epochs
            Linear warm-up from ``start_lr`` (paper: 2e-4) to ``lr`` over ``warmup_epochs`` (paper: 15), then cosine
            decay to ``final_lr`` (MSN ViT-S config: 1e-3 peak, 1e-6 final).
        weight_decay, ema_momentum
            Start and end of the cosine weight decay (0.04 -> 0.4) and linear EMA momentum (0.996 -> 1.0).
        clip_grad
            Gradient norm clipping (MSN: 3.0).
        accelerator
            ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``. On CUDA the step runs under bf16 autocast.
        num_workers
            Data-loader processes reading the store.
        cuda_graph
            On CUDA, record the training step once as a CUDA graph and replay it (see
            :class:`cpembed.module.MSNTrainingStep`): the same computation with far less host work per step.
        progress_bar
            Show a tqdm bar over epochs.
        """
        import torch
        from tqdm.auto import trange

        from ..module import MSNTrainingStep, PairBatches, Schedule, StoreImages, prefetch_to_device

        if accelerator == "auto":
            accelerator = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(accelerator)
        steps_per_epoch = steps_per_epoch or max(1, self.adata.n_obs // batch_size)
        total_steps = max_epochs * steps_per_epoch
        schedule = Schedule(
            total_steps,
            int(warmup_epochs * steps_per_epoch),
            start_lr,
            lr,
            final_lr,
            weight_decay[0],
            weight_decay[1],
            ema_momentum[0],
            ema_momentum[1],
        )
        self.module.to(device).train()
        autocast = torch.bfloat16 if device.type == "cuda" else None
        training_step = MSNTrainingStep(
            self.module,
            self.views,
            clip_grad=clip_grad,
            autocast_dtype=autocast,
            cuda_graph=cuda_graph and device.type == "cuda",
        )
        batches = PairBatches(
            StoreImages(self.setup_args_["image_store"]),
            self._sampler(self.adata),
            batch_size,
            steps_per_epoch,
            self.init_params_["seed"],
        )
        loader = torch.utils.data.DataLoader(
            batches, batch_size=None, shuffle=False, num_workers=num_workers, pin_memory=device.type == "cuda"
        )
        # A store handle of its own: the loader's stays closed in this process, so forked workers open their own.
        channel_stats = self._channel_statistics(
            self.adata, StoreImages(self.setup_args_["image_store"]), self.setup_args_
        )
        channel_stats = None if channel_stats is None else torch.from_numpy(channel_stats).to(device)
        step = 0
        with (
            self._restored_on_failure(),
            seeded_torch_random(self.init_params_["seed"], cuda=device.type == "cuda"),  # crops, patch drops
        ):
            description = "CWA-MSN" if self.init_params_["cross_well"] else "MSN (single-well)"
            progress = trange(max_epochs, desc=description, disable=not progress_bar)
            for epoch in progress:
                batches.epoch = epoch
                losses = []
                for anchor_images, target_images, anchor_rows, target_rows in prefetch_to_device(loader, device):
                    loss = training_step(
                        anchor_images,
                        target_images,
                        learning_rate=schedule.learning_rate(step),
                        weight_decay=schedule.weight_decay_at(step),
                        momentum=schedule.momentum_at(step),
                        anchor_stats=None if channel_stats is None else channel_stats[anchor_rows],
                        target_stats=None if channel_stats is None else channel_stats[target_rows],
                    )
                    losses.append(loss)
                    step += 1
                self.history_["loss"].append(float(torch.stack(losses).mean()))
                progress.set_postfix(loss=f"{self.history_['loss'][-1]:.3f}")
        self.module.eval()
        self.is_trained_ = True

    @contextmanager
    def _restored_on_failure(self) -> Iterator[None]:
        """Run the block; when it fails or is interrupted (Ctrl-C), restore weights and history, then re-raise.

        A training stopped part-way thus leaves the model as it was before :meth:`train`, not half-trained.
        """
        import torch

        saved_state = cpu_state_dict(self.module)
        saved_history, was_trained = copy.deepcopy(self.history_), self.is_trained_
        device = next(self.module.parameters()).device
        try:
            yield
        except BaseException:
            with torch.no_grad():
                self.module.load_state_dict(saved_state)
            self.module.to(device).eval()
            self.history_, self.is_trained_ = saved_history, was_trained
            raise

    # ------------------------------------------------------------------ inference
    def get_latent_representation(self, adata: AnnData | None = None, batch_size: int = 256) -> np.ndarray:
        """Embed every image (row) with the EMA target encoder, head dropped, whole image resized to ``image_size``.

        Parameters
        ----------
        adata
            AnnData set up like the training one (default: the training AnnData); its images are read from the
            store registered for it and, with ``normalization="plate_controls"``, standardised on the controls of
            its own plates.
        batch_size
            Images per forward pass.

        Returns
        -------
        ``(n_obs, embed_dim)`` float32 array.
        """
        import torch

        from ..module import StoreImages, resize_for_inference

        adata = self.adata if adata is None else adata
        store = self._validated_store(adata)
        images = StoreImages(store)
        device = next(self.module.parameters()).device
        rows = adata.obs["image_index"].to_numpy()
        channel_stats = self._channel_statistics(adata, images, self._registered_setup(adata))
        self.module.eval()
        out = []
        with torch.no_grad():
            for start in range(0, len(rows), batch_size):
                batch_rows = rows[start : start + batch_size]
                batch = torch.from_numpy(images.read(batch_rows)).to(device)
                stats = None if channel_stats is None else torch.from_numpy(channel_stats[batch_rows]).to(device)
                views = resize_for_inference(batch, self.views.image_size, stats)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    out.append(self.module.embed(views).float().cpu())
        return torch.cat(out).numpy()

    def _validated_store(self, adata: AnnData) -> str:
        setup = self._registered_setup(adata)
        n_channels = _store_shape(setup["image_store"])[1]
        expected = self.module.encoder.patch_embed.in_channels
        if n_channels != expected:
            raise ValueError(f"The image store has {n_channels} channels; the model was trained on {expected}.")
        return setup["image_store"]

    # ------------------------------------------------------------------ persistence
    def save(self, dir_path: str | Path, *, overwrite: bool = False) -> None:
        """Save weights, init parameters, setup arguments and history to ``dir_path/model.pt``.

        The file is written under a temporary name and renamed at the end, so an interrupted save leaves an
        earlier ``model.pt`` whole.
        """
        import torch

        dir_path = Path(dir_path)
        if (dir_path / MODEL_FILE).exists() and not overwrite:
            raise FileExistsError(f"{dir_path / MODEL_FILE} exists; pass overwrite=True.")
        dir_path.mkdir(parents=True, exist_ok=True)
        state = {
            "state_dict": cpu_state_dict(self.module),
            "init_params": self.init_params_,
            "setup_args": self.setup_args_,
            "history": self.history_,
            "is_trained": self.is_trained_,
        }
        with replacing(dir_path / MODEL_FILE) as partial:
            torch.save(state, partial)

    @classmethod
    def load(cls, dir_path: str | Path, adata: AnnData, *, accelerator: str = "cpu") -> CWAMSN:
        """Load a saved model for ``adata``.

        When ``adata`` is not set up yet, it is set up with the saved keys and its own image store
        (``adata.uns["image_store"]``); only when it records none are its images read from the training store.
        """
        import torch

        model_file = Path(dir_path) / MODEL_FILE
        if not model_file.is_file():
            raise FileNotFoundError(f"No saved CWAMSN model at {model_file}: pass the folder written by model.save().")
        state = torch.load(model_file, map_location="cpu", weights_only=False)
        if SETUP_UNS_KEY not in adata.uns:
            setup = dict(state["setup_args"])
            if "image_store" in adata.uns:
                setup.pop("image_store")
            else:
                warnings.warn(
                    f"adata records no image store (adata.uns['image_store']); its images are read from the "
                    f"training store {setup['image_store']}.",
                    stacklevel=2,
                )
            cls.setup_anndata(adata, **setup)
        model = cls(adata, **state["init_params"])
        model.module.load_state_dict(state["state_dict"])
        model.history_ = state["history"]
        model.is_trained_ = state["is_trained"]
        model.module.to(accelerator).eval()
        return model

    def __repr__(self) -> str:
        kind = "CWA-MSN (cross-well)" if self.init_params_["cross_well"] else "MSN (single-well)"
        n_params = sum(p.numel() for p in self.module.encoder.parameters())
        return f"{kind} with a {n_params / 1e6:.2f}M-parameter ViT, trained: {self.is_trained_}"
