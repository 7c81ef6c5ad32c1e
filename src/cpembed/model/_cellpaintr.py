"""CellPainTR: a source-aware transformer that embeds Cell Painting profiles across sources (scvi-tools style)."""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data.fields import CategoricalObsField, LayerField

from cpembed._validation import check_indices, check_layer, check_obs_complete, check_obs_keys, control_flags
from cpembed.io import FeatureMatch, match_features, parse_feature_names
from cpembed.module import CellPainTRModule
from cpembed.pp import feature_groups

from .._files import staged_folder
from ._data import WellDataModule, WellDataset, feature_matrix, iter_row_chunks, read_rows
from ._random_state import seeded_torch_random
from ._registration import RegisteredModel, register_fields
from ._samplers import BlockShuffleBatchSampler, PKBatchSampler
from ._save_load import ADATA_FILE, MODEL_FILE, check_save_folder
from ._state import cpu_state_dict
from ._trainer import fit, raise_stopped, training_device
from ._training_plan import PRESET_STAGES, CellPainTRTrainingPlan, StageConfig

logger = logging.getLogger(__name__)

StageSettings = StageConfig | Mapping[str, object] | None

#: Settings of :meth:`CellPainTR.add_source`: only one token vector is fitted, so a larger learning rate than the
#: backbone's is safe (our choice; the paper has no such step).
ADD_SOURCE_STAGE = StageConfig(max_epochs=5, batch_size=32, lr=1e-3, contrastive_weight=0.0)

#: Gradient-norm clipping of every stage (the reference code's value).
GRADIENT_CLIP = 1.0

#: Wells the network's fixed PCA projection is fitted on (a random sample when there are more).
PROJECTION_SAMPLE = 20_000

#: Share of the model's features below which embedding a study warns: measured, a model missing 380 of its 477
#: features retrieved compounds worse than a PCA of the study (docs/benchmarks.md), one missing 30% did well.
FEW_MATCHED_FEATURES = 0.5

#: Attributes that training changes besides the weights; a failed or interrupted training restores them.
TRAINING_STATE = (
    "stage_states_",
    "history_",
    "training_preset_",
    "training_settings_",
    "is_trained_",
    "_added_sources",
    "init_params_",
)


class _CellPainTRNetwork(CellPainTRModule):
    """The network with the two hooks scvi-tools' :class:`~scvi.model.base.BaseModelClass` calls on a module."""

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def on_load(self, model, **kwargs) -> None:
        """Nothing to prepare before the saved state dict is loaded."""


class CellPainTR(RegisteredModel):
    """CellPainTR (Cell Painting TRansformer, Pham et al., 2025) for batch-corrected embeddings of profiles.

    Each well is a sequence of feature tokens plus a CLS token and a learned token for its source (lab); a
    bidirectional Hyena backbone mixes them and the CLS output is the embedding. Training has three stages
    (Appendix A of the paper): (1) channel-wise masked morphology (CWMM) pretraining on all wells; (2) CWMM plus
    supervised contrastive learning with minibatches from one source, after a warm-up epoch that trains only
    the source tokens; (3) the same loss with minibatches mixing sources. Each stage's weights are kept, so
    CellPainTR(1), CellPainTR(2) and the final model of the paper's Table 1 can all be queried.

    Beyond the paper: a learned unknown-source token, trained by source dropout, embeds wells of sources never
    seen; :meth:`add_source` fits a token for a new source from its unlabelled wells with the backbone frozen.

    The model expects preprocessed features, prepared with :mod:`cpembed.pp` (the paper's preprocessing: per-plate
    robust MAD normalisation against negative controls with :func:`cpembed.pp.normalize_to_controls`, then
    clipping with :func:`cpembed.pp.clip_quantiles`). Remaining NaN or infinite values are read as 0.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    d_model
        Token width (paper: 256).
    n_layers
        Hyena blocks (paper: 4).
    d_mlp
        Hidden width of each block's MLP (paper: 1024).
    dropout
        Dropout rate (paper: 0.1).
    filter_width
        Width of the implicit Hyena filter MLP (reference code: 64).
    added_sources
        Sources added after training with :meth:`add_source`; filled in by the model, so that a saved model
        rebuilds its vocabulary on :meth:`load`.
    readout
        Outputs of the final LayerNorm that are read: ``"cls"``, the CLS position (the paper), or ``"mean"`` over
        the feature positions.
    linear_path
        ``False`` (the paper): the embedding is the read-out. ``True`` (the ``"anchored"`` preset, with
        ``readout="mean"``): the embedding is the network's PCA projection of the profile plus a learned correction
        of the read-out that starts at zero, so training moves wells away from PCA only as far as its objective
        asks. Either way the model fits a PCA of ``adata`` (as many components as the embedding has dimensions) that
        training losses may compare with. ``docs/concepts.md`` gives the measurements behind the presets.
    n_latent
        Dimensions of the embedding with the linear path (its PCA components); ``None`` is ``d_model``. Measured on
        BBBC021, a narrower embedding raises the benchmark's Overall and lowers NSCB, as a narrower PCA does
        (``docs/benchmarks.md``).
    projection
        The fixed projection: ``"pca"``, the principal components of the profiles, or ``"control_whitened"``, the
        same components whitened by the covariance of the negative controls in them (typical variation
        normalisation, Ando et al. 2017), estimated with Ledoit-Wolf shrinkage: directions in which the controls vary
        (technical variation) shrink, the others grow. Needs the ``control_key`` of :meth:`setup_anndata`.
    seed
        Seed of the initial weights; :meth:`train` takes its own seed for masks, sampling and dropout. The caller's
        random state is left untouched, so one seed gives one model whatever ran before.

    Notes
    -----
    Scale: ``adata`` may be an ``.h5ad`` opened in backed mode (``anndata.read_h5ad(path, backed="r")``); wells are
    then read in contiguous chunks per minibatch and never loaded as a whole. Several GPUs: Lightning's DDP via
    ``model.train(accelerator="gpu", devices=4, strategy="ddp")``; every sampler shards each epoch's minibatches
    across processes (P x K and single-source batches stay intact), and non-finite batches are skipped on all
    processes together. Precision defaults to ``"bf16-mixed"`` on GPUs.

    Examples
    --------
    >>> cpe.model.CellPainTR.setup_anndata(adata, batch_key="Metadata_Source", labels_key="Metadata_Compound")
    >>> model = cpe.model.CellPainTR(adata)
    >>> model.train()
    >>> adata.obsm["X_cellpaintr"] = model.get_latent_representation()
    """

    _module_cls = _CellPainTRNetwork
    _training_plan_cls = CellPainTRTrainingPlan

    def __init__(
        self,
        adata: AnnData,
        d_model: int = 256,
        n_layers: int = 4,
        d_mlp: int = 1024,
        dropout: float = 0.1,
        filter_width: int = 64,
        readout: Literal["cls", "mean"] = "cls",
        linear_path: bool = False,
        n_latent: int | None = None,
        projection: Literal["pca", "control_whitened"] = "pca",
        added_sources: Sequence[str] = (),
        seed: int = 0,
    ):
        super().__init__(adata)
        controls = self._projection_controls(adata, projection)
        self._added_sources = list(added_sources)
        self.feature_groups = _feature_group_ids(adata)
        with seeded_torch_random(seed):
            self.module = self._module_cls(
                n_features=adata.n_vars,
                n_sources=len(self._trained_sources),
                feature_groups=self.feature_groups,
                d_model=d_model,
                n_layers=n_layers,
                d_mlp=d_mlp,
                dropout=dropout,
                filter_width=filter_width,
                unknown_source=True,
                readout=readout,
                linear_path=linear_path,
                n_latent=n_latent,
            )
        matrix = feature_matrix(adata, self._setup_arg("layer"))
        self.module.set_projection(*_pca_projection(matrix, self.module.embedding_dim, seed, controls))
        if added_sources:
            self.module.add_sources(len(added_sources))
        self.stage_states_: dict[int, dict] = {}
        self.training_preset_: str | None = None
        self.training_settings_: dict = {}
        self.history_ = {}
        self._model_summary_string = (
            f"CellPainTR with {adata.n_vars} features, {len(self.source_names)} sources, d_model={d_model}, "
            f"n_layers={n_layers}, readout={readout!r}, linear_path={linear_path}, embedding of "
            f"{self.module.embedding_dim} dimensions"
        )
        self.init_params_ = self._get_init_params(locals())

    # ------------------------------------------------------------------ AnnData registration

    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
        layer: str | None = None,
        batch_key: str | None = None,
        labels_key: str | None = None,
        unlabeled_category: str | None = None,
        control_key: str | None = None,
        **kwargs,
    ) -> None:
        """Register the features, the source and the labels of ``adata`` for CellPainTR.

        As in scvi-tools, this adds the columns ``_scvi_batch`` and ``_scvi_labels`` to ``adata.obs`` and
        ``_scvi_uuid`` / ``_scvi_manager_uuid`` to ``adata.uns``; nothing else changes.

        Parameters
        ----------
        adata
            Wells x features, preprocessed (see :class:`CellPainTR`). May be opened in backed mode.
        layer
            Layer holding the features; ``None`` uses ``adata.X``.
        batch_key
            ``.obs`` column of the source (lab, or batch) each well comes from; ``None`` means one source.
        labels_key
            ``.obs`` column of the biological label (compound, or InChIKey) whose wells are positives of each
            other in stages 2 and 3.
        unlabeled_category
            Value of ``labels_key`` marking wells without a trusted label: used in stage 1 only (the paper trains
            stages 2-3 on compounds with known MoA and controls).
        control_key
            Boolean ``.obs`` column, ``True`` for the negative-control wells, which ``projection="control_whitened"``
            reads.
        """
        check_obs_keys(adata, batch_key, labels_key)
        if control_key is not None:
            control_flags(adata, control_key)
        check_layer(adata, layer)
        check_obs_complete(
            adata,
            labels_key,
            advice=" Fill them with a category such as 'unknown' and pass unlabeled_category='unknown'.",
        )
        setup_method_args = cls._get_setup_method_args(**locals())
        fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=False),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
            CategoricalObsField(REGISTRY_KEYS.LABELS_KEY, labels_key),
        ]
        adata_manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        register_fields(adata_manager, adata, **kwargs)
        cls.register_manager(adata_manager)

    def _setup_arg(self, name: str):
        return self.registry_["setup_args"].get(name)

    def _projection_controls(self, adata: AnnData, projection: str) -> np.ndarray | None:
        """The control flags the projection is whitened with (``None`` for a plain PCA), checked."""
        if projection not in ("pca", "control_whitened"):
            raise ValueError(f"projection must be 'pca' or 'control_whitened', got {projection!r}.")
        if projection == "pca":
            return None
        control_key = self._setup_arg("control_key")
        if control_key is None:
            raise ValueError(
                "projection='control_whitened' needs the negative controls: pass control_key= to "
                "CellPainTR.setup_anndata (a boolean .obs column, True for the control wells)."
            )
        return control_flags(adata, control_key)

    @property
    def _trained_sources(self) -> list:
        return list(
            self.registry_["field_registries"][REGISTRY_KEYS.BATCH_KEY]["state_registry"]["categorical_mapping"]
        )

    @property
    def source_names(self) -> list:
        """Sources the model has a token for, in token order (training sources, then added ones)."""
        return [*self._trained_sources, *self._added_sources]

    @property
    def n_sources(self) -> int:
        """Number of source tokens, without the unknown-source token (whose index this is)."""
        return len(self.source_names)

    def _registered_matrix(self, adata: AnnData):
        """The features of ``adata`` where the model's registry says they are (``X`` or the setup layer).

        Every matrix the model reads goes through here, so training, new sources and embeddings read the same
        numbers; ``adata`` must hold the model's features in the model's order (else ValueError) and the layer
        (else KeyError).
        """
        _check_same_features(adata.var_names, self.adata.var_names)
        return feature_matrix(adata, self._setup_arg("layer"))

    def _source_codes(self, adata: AnnData, unseen_source: Literal["warn", "raise"] = "warn") -> np.ndarray:
        batch_key = self._setup_arg("batch_key")
        if batch_key is None:
            return np.zeros(adata.n_obs, dtype=np.int64)
        if batch_key not in adata.obs.columns and unseen_source == "warn":
            warnings.warn(
                f"adata.obs has no column {batch_key!r} (the model's source key): its wells are taken to come from "
                "one source not seen in training and embedded with the unknown-source token.",
                stacklevel=3,
            )
            return np.full(adata.n_obs, self.n_sources, dtype=np.int64)
        check_obs_keys(adata, batch_key)
        values = adata.obs[batch_key]
        codes = pd.Index(self.source_names).get_indexer(values)
        unseen = sorted(set(values[codes < 0]), key=str)
        if unseen:
            message = f"Sources not seen in training: {unseen[:10]}"
            if unseen_source == "raise":
                raise ValueError(f"{message}. Add them with model.add_source(adata, name) first.")
            warnings.warn(f"{message}; their wells are embedded with the unknown-source token.", stacklevel=3)
            codes[codes < 0] = self.n_sources
        return codes.astype(np.int64)

    def _label_codes(self, adata: AnnData) -> np.ndarray:
        labels_key = self._setup_arg("labels_key")
        if labels_key is None:
            return np.full(adata.n_obs, -1, dtype=np.int64)
        mapping = self.registry_["field_registries"][REGISTRY_KEYS.LABELS_KEY]["state_registry"]["categorical_mapping"]
        codes = pd.Index(mapping).get_indexer(adata.obs[labels_key]).astype(np.int64)
        unlabeled = self._setup_arg("unlabeled_category")
        if unlabeled is not None:
            codes[(adata.obs[labels_key] == unlabeled).to_numpy()] = -1
        return codes

    # ------------------------------------------------------------------ training

    def train(
        self,
        stage1: StageSettings = None,
        stage2: StageSettings = None,
        stage3: StageSettings = None,
        *,
        stages: Sequence[int] = (1, 2, 3),
        preset: Literal["contrastive", "anchored", "paper"] = "contrastive",
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        precision: str | None = None,
        source_dropout: float = 0.1,
        group_wise_loss: bool = True,
        block_size: int = 65_536,
        seed: int = 0,
        **trainer_kwargs,
    ) -> None:
        """Run the training stages.

        Parameters
        ----------
        stage1, stage2, stage3
            Settings of each stage: a :class:`StageConfig`, or a dict of fields overriding the preset's
            (:data:`PRESET_STAGES`), e.g. ``stage2={"max_epochs": 4, "lr": 3e-5}``.
        stages
            Stages to run, in order; stages 2 and 3 need ``labels_key``.
        preset
            ``"contrastive"`` (default): the paper's stages plus a term that keeps the neighbourhoods of the PCA
            (:data:`CONTRASTIVE_STAGES`); ``"anchored"``: stages 2-3 align replicates on the linear path
            (:data:`ANCHORED_STAGES`; needs ``linear_path=True``); ``"paper"``: the paper's stages
            (:data:`PAPER_STAGES`). :func:`cpembed.tl.cellpaintr` chooses between the first two from the design.
        accelerator, devices
            As in Lightning. For several GPUs pass ``devices=4, strategy="ddp"``: each process trains on its own
            share of every epoch's minibatches (the samplers shard like a ``DistributedSampler``).
        precision
            Lightning precision; default ``"bf16-mixed"`` on a GPU, ``"32-true"`` otherwise.
        source_dropout
            Probability of showing a well with the unknown-source token during training (our addition, so
            that wells of unseen sources can be embedded).
        group_wise_loss
            Average the masked-feature MSE per feature group (Eq. 9 of the paper); ``False`` averages over all
            masked values (the reference code).
        block_size
            Stage 1 reads minibatches from blocks of this many consecutive wells, which keeps reads from a backed
            ``.h5ad`` contiguous.
        seed
            Seed of the samplers, masks, source dropout and dropout (training is reproducible for one seed).
        **trainer_kwargs
            Passed to :class:`scvi.train.Trainer` (and on to Lightning), e.g. ``strategy``,
            ``enable_progress_bar``.
        """
        if preset not in PRESET_STAGES:
            raise ValueError(f"preset must be one of {sorted(PRESET_STAGES)}, got {preset!r}.")
        configs = {
            stage: _merge_config(PRESET_STAGES[preset][stage], settings)
            for stage, settings in zip((1, 2, 3), (stage1, stage2, stage3), strict=True)
        }
        if not self.module.linear_path and any(configs[stage].objective == "align" for stage in set(stages) - {1}):
            raise ValueError(
                "The anchored stages align replicates on the linear path, which this model lacks (linear_path=False): "
                'train it with preset="contrastive" or "paper", or build it with linear_path=True.'
            )
        unknown = sorted(set(stages) - set(configs))
        if unknown:
            raise ValueError(f"stages must be among 1, 2, 3; got {unknown}.")
        if self._setup_arg("labels_key") is None and {2, 3} & set(stages):
            raise ValueError("Stages 2 and 3 need labels: run setup_anndata with labels_key, or train stages=(1,).")
        data = self._training_dataset()
        fit_kwargs = {
            "accelerator": accelerator,
            "devices": devices,
            "precision": precision,
            "source_dropout": source_dropout,
            "group_wise_loss": group_wise_loss,
            **trainer_kwargs,
        }
        with self._restored_on_failure():
            self.training_preset_ = preset
            self.training_settings_ = {
                "preset": preset,
                "seed": seed,
                "source_dropout": source_dropout,
                "group_wise_loss": group_wise_loss,
                "stages": {**self.training_settings_.get("stages", {}), **{s: asdict(configs[s]) for s in stages}},
            }
            for stage in stages:
                config = configs[stage]
                make_sampler = self._stage_sampler(stage, data, config, block_size=block_size, seed=seed + stage)
                losses = []
                if config.warmup_epochs:
                    with _trainable(self.module, self.module.source_parameters()):
                        warmup = replace(config, max_epochs=config.warmup_epochs, warmup_epochs=0)
                        losses += self._fit(WellDataModule(data, make_sampler), warmup, seed=seed, **fit_kwargs)
                remaining = replace(config, max_epochs=config.max_epochs - config.warmup_epochs, warmup_epochs=0)
                losses += self._fit(WellDataModule(data, make_sampler), remaining, seed=seed, **fit_kwargs)
                self._record(f"stage{stage}", losses)
                self.stage_states_[stage] = {"n_sources": self.n_sources, "state_dict": cpu_state_dict(self.module)}

    @contextmanager
    def _restored_on_failure(self) -> Iterator[None]:
        """Run the block; when it fails or is interrupted, put the model back as it was before, then re-raise.

        Weights, source tokens, stage snapshots, history and the trained flag all return to their state before the
        block, so a model whose training stopped part-way is the model it was, and training it again gives what a
        fresh model gives. Ctrl-C and SIGTERM are raised again as the user's action reads (see
        :func:`~cpembed.model._trainer.raise_stopped`).
        """
        saved_state, n_sources, device = cpu_state_dict(self.module), self.module.n_sources, self.device
        saved_attributes = {name: copy.deepcopy(getattr(self, name)) for name in TRAINING_STATE}
        try:
            yield
        except BaseException as error:
            self.module = self._network(n_sources, saved_state, self._module_cls).to(device).eval()
            for name, value in saved_attributes.items():
                setattr(self, name, value)
            raise_stopped(error, "CellPainTR")

    def _training_dataset(self) -> WellDataset:
        adata = self.adata
        return WellDataset(self._registered_matrix(adata), self._source_codes(adata), self._label_codes(adata))

    @staticmethod
    def _stage_sampler(stage: int, data: WellDataset, config: StageConfig, *, block_size: int, seed: int):
        def make_sampler(num_replicas: int, rank: int):
            shard = {"seed": seed, "num_replicas": num_replicas, "rank": rank}
            if stage == 1:
                return BlockShuffleBatchSampler(np.arange(len(data)), config.batch_size, block_size=block_size, **shard)
            groups = data.sources if stage == 2 else None
            return PKBatchSampler(
                data.labels, config.batch_size, wells_per_label=config.wells_per_label, groups=groups, **shard
            )

        return make_sampler

    def _fit(
        self,
        datamodule: WellDataModule,
        config: StageConfig,
        *,
        accelerator: str,
        devices: int | list[int] | str,
        precision: str | None,
        source_dropout: float,
        group_wise_loss: bool,
        seed: int,
        **trainer_kwargs,
    ) -> list[dict[str, float]]:
        if config.max_epochs == 0:
            return []
        plan = self._training_plan_cls(
            self.module,
            self.feature_groups,
            self.n_sources,
            config,
            source_dropout=source_dropout,
            group_wise_loss=group_wise_loss,
            seed=seed,
        )
        accelerator, devices, device = training_device(accelerator, devices)
        trainer_kwargs.setdefault("gradient_clip_val", GRADIENT_CLIP)
        trainer_kwargs.setdefault("precision", _default_precision(device, precision))
        self.module.train()
        with seeded_torch_random(seed, cuda=accelerator != "cpu"):  # dropout draws from the global generators
            fit(
                plan,
                datamodule,
                max_epochs=config.max_epochs,
                accelerator=accelerator,
                devices=devices,
                use_distributed_sampler=False,  # the samplers shard the epoch themselves
                **trainer_kwargs,
            )
        self.module.eval()
        self.is_trained_ = True
        self.to_device(device)
        return plan.epoch_losses

    def _record(self, name: str, epoch_losses: list[dict[str, float]]) -> None:
        history = pd.DataFrame(epoch_losses)
        if not history.empty:
            history["epoch"] = np.arange(len(history))
            history = history.set_index("epoch")
        self.history_ = {**(self.history_ or {}), name: history}

    # ------------------------------------------------------------------ new sources

    def add_source(
        self,
        adata: AnnData,
        source_name: str,
        config: StageSettings = None,
        *,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        precision: str | None = None,
        seed: int = 0,
        **trainer_kwargs,
    ) -> None:
        """Add a source and fit its token from unlabelled wells, with every other parameter frozen.

        The new token starts as a copy of the unknown-source token and is trained with the masked-feature loss only, so
        no labels are needed. All wells of ``adata`` are taken to come from ``source_name``.

        Parameters
        ----------
        adata
            Wells of the new source, with the model's features in the same order, where the model reads them (the
            layer of :meth:`setup_anndata`, else ``X``).
        source_name
            Name of the new source; must not be known yet.
        config
            A :class:`StageConfig` or a dict overriding :data:`ADD_SOURCE_STAGE`.
        accelerator, devices, precision, seed, **trainer_kwargs
            As in :meth:`train`.
        """
        if source_name in self.source_names:
            raise ValueError(f"Source {source_name!r} is already known to the model.")
        matrix = self._registered_matrix(adata)
        config = _merge_config(ADD_SOURCE_STAGE, config)
        new_index = self.n_sources
        data = WellDataset(matrix, np.full(adata.n_obs, new_index, dtype=np.int64), np.full(adata.n_obs, -1))

        def make_sampler(num_replicas: int, rank: int):
            return BlockShuffleBatchSampler(
                np.arange(adata.n_obs), config.batch_size, seed=seed, num_replicas=num_replicas, rank=rank
            )

        with self._restored_on_failure():
            self.module.add_sources(1)
            self._added_sources.append(source_name)
            self.init_params_["non_kwargs"]["added_sources"] = list(self._added_sources)
            token_tables = [p for p in self.module.source_parameters() if p.shape[0] == self.n_sources + 1]
            with _trainable(self.module, token_tables, rows=[new_index]):
                losses = self._fit(
                    WellDataModule(data, make_sampler),
                    config,
                    accelerator=accelerator,
                    devices=devices,
                    precision=precision,
                    source_dropout=0.0,
                    group_wise_loss=True,
                    seed=seed,
                    **trainer_kwargs,
                )
            self._record(f"add_source:{source_name}", losses)

    # ------------------------------------------------------------------ embeddings

    def get_latent_representation(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        *,
        stage: Literal[1, 2, 3] | None = None,
        unseen_source: Literal["warn", "raise"] = "warn",
        channel_aliases: Mapping[str, str] | None = None,
        features: FeatureMatch | None = None,
    ) -> np.ndarray:
        """Embed wells: the read-out of the final layer norm, or the PCA projection plus the learned correction.

        The read-out is the CLS output (Section 3.1 of the paper) unless the model reads the mean of the feature
        positions; with the linear path the embedding is the projection plus the correction of the read-out.

        ``adata`` may hold another feature set than the training data (another study, another CellProfiler
        pipeline): its features are matched to the model's by name, then by identity
        (:func:`cpembed.io.match_features`); the model's features it lacks are masked, as in masked-feature training
        (with the linear path the projection reads the network's prediction of them), and features the model never
        saw are ignored. :meth:`feature_match` does the matching and reports the counts.

        Parameters
        ----------
        adata
            Wells to embed; default the training data. May be backed: rows are read in chunks of ``batch_size``.
        indices
            Rows of ``adata`` to embed (positions in ``[0, n_obs)``); default all.
        batch_size
            Wells per forward pass; default 256.
        stage
            Embed with the weights saved at the end of this stage (CellPainTR(1), CellPainTR(2), ...); ``None``
            uses the current weights (the final model, with any sources added since).
        unseen_source
            What to do with wells whose source has no token: ``"warn"`` embeds them with the unknown-source token,
            ``"raise"`` raises a ValueError. A study without the model's source column counts as one unseen source
            (``"raise"``: KeyError).
        channel_aliases
            Channel names read as others when matching features, passed to :func:`cpembed.io.match_features`.
        features
            The match of ``adata``'s features that :meth:`feature_match` returned, to embed ``adata`` several times
            (say, with each stage's weights) with one matching and one report; default: matched here.

        Returns
        -------
        Embeddings, wells x the embedding's dimensions (``d_model``, or ``n_latent`` with the linear path), float32.
        """
        self._check_if_trained(warn=False)
        adata = self.adata if adata is None else adata
        if features is None:
            match = self.feature_match(adata, channel_aliases)
        elif features.names.equals(adata.var_names) and features.reference.equals(self.adata.var_names):
            match = features
        else:
            raise ValueError(
                "`features` is the match of another feature set than adata's against the model's: pass "
                "model.feature_match(adata), or leave it out."
            )
        matrix = feature_matrix(adata, self._setup_arg("layer"))
        rows = check_indices(indices, adata.n_obs)
        network = self.module if stage is None else self._stage_network(stage)
        sources = self._source_codes(adata, unseen_source)
        n_known = network.n_sources if stage is not None else self.n_sources
        sources = np.where(sources < n_known, sources, n_known)
        device = self.device
        network.eval()
        embeddings = np.empty((len(rows), network.embedding_dim), dtype=np.float32)
        with torch.inference_mode():
            for positions, values in iter_row_chunks(matrix, rows, batch_size or 256):
                source = torch.from_numpy(sources[rows[positions]]).to(device)
                x, mask = _as_model_features(values, match)
                mask = None if mask is None else torch.from_numpy(mask).to(device)
                embeddings[positions] = (
                    network.embed(torch.from_numpy(x).to(device), source, mask).float().cpu().numpy()
                )
        return embeddings

    def feature_match(self, adata: AnnData, channel_aliases: Mapping[str, str] | None = None) -> FeatureMatch:
        """How the features of ``adata`` map onto the model's (:func:`cpembed.io.match_features`), reported.

        Unless ``adata`` has the model's features in its order, a log line gives the counts of matched, missing and
        unknown features; a warning says when fewer than half of the model's features were found. Raises a
        ValueError when none of them is one of the model's.
        """
        match = match_features(self.adata.var_names, adata.var_names, channel_aliases)
        if match.n_matched == 0:
            raise ValueError(
                f"None of the {adata.n_vars} features of adata is one of the model's {self.adata.n_vars} (by name or "
                f"by identity; e.g. {list(adata.var_names[:3])} against {list(self.adata.var_names[:3])}): there is "
                "nothing the model can read. Are these CellProfiler features?"
            )
        if not match.is_identity:
            logger.info("CellPainTR reads %d wells: %s.", adata.n_obs, match.describe())
        if match.n_matched < FEW_MATCHED_FEATURES * self.adata.n_vars:
            warnings.warn(
                f"adata has only {match.n_matched} of the model's {self.adata.n_vars} features: the embedding reads "
                "the others as masked and may keep less than a PCA of adata's own features. Compare the two "
                "(docs/benchmarks.md, 'CellPainTR on another study').",
                stacklevel=3,
            )
        return match

    def _stage_network(self, stage: int) -> CellPainTRModule:
        if stage not in self.stage_states_:
            raise ValueError(f"Stage {stage} has not been trained (trained stages: {sorted(self.stage_states_)}).")
        saved = self.stage_states_[stage]
        return self._network(saved["n_sources"], saved["state_dict"]).to(self.device)

    def _network(
        self, n_sources: int, state_dict: Mapping[str, torch.Tensor], network_cls: type = CellPainTRModule
    ) -> CellPainTRModule:
        """A network of this model's architecture with ``n_sources`` source tokens and the weights ``state_dict``."""
        params = self.init_params_["non_kwargs"]
        network = network_cls(
            n_features=self.adata.n_vars,
            n_sources=n_sources,
            feature_groups=self.feature_groups,
            d_model=params["d_model"],
            n_layers=params["n_layers"],
            d_mlp=params["d_mlp"],
            dropout=params["dropout"],
            filter_width=params["filter_width"],
            unknown_source=True,
            readout=params.get("readout", "cls"),
            linear_path=params.get("linear_path", False),
            n_latent=params.get("n_latent"),
        )
        network.load_state_dict(state_dict)
        return network

    # ------------------------------------------------------------------ model card

    def describe(self) -> str:
        """The model card: what the model was trained on and how, as Markdown text.

        Lists the architecture, the training sources (with their wells) and any added ones, the labels, the
        features (by compartment, measurement and channel, as :func:`cpembed.io.parse_feature_names` reads them),
        the training preset with every stage's settings, and each stage's final losses. A saved and loaded model
        describes itself the same way.

        Returns
        -------
        The card; ``print(model.describe())`` shows it.
        """
        import cpembed

        params = self.init_params_["non_kwargs"]
        n_parameters = sum(parameter.numel() for parameter in self.module.parameters())
        architecture = ", ".join(
            [
                *(f"{name} {params[name]}" for name in ("d_model", "n_layers", "d_mlp", "readout", "linear_path")),
                f"embedding dimensions {self.module.embedding_dim}",
                f"projection {params.get('projection', 'pca')}",
            ]
        )
        setup = self.registry_["setup_args"]
        counts = np.bincount(self._source_codes(self.adata), minlength=len(self._trained_sources))
        wells = pd.Series(counts[: len(self._trained_sources)], index=self._trained_sources)
        lines = [
            "# CellPainTR model card",
            "",
            f"- cpembed {cpembed.__version__}; {n_parameters:,} parameters: {architecture}",
            f"- Trained: {'yes, stages ' + str(sorted(self.stage_states_)) if self.is_trained_ else 'no'}",
            f"- Source key: {setup['batch_key']!r}; label key: {setup['labels_key']!r} "
            f"(unlabelled: {setup['unlabeled_category']!r}); layer: {setup['layer']!r}",
            "",
            f"## Sources ({len(self._trained_sources)} trained, {len(self._added_sources)} added)",
            "",
            *(f"- {source}: {count} wells" for source, count in wells.items()),
            *(f"- {source}: added with add_source" for source in self._added_sources),
            "",
            f"## Features ({self.adata.n_vars})",
            "",
        ]
        parts = parse_feature_names(self.adata.var_names)
        for column in ("compartment", "measurement", "channel"):
            counts = parts[column].replace("", "(none)").value_counts()
            lines.append(f"- {column}: " + ", ".join(f"{value} {count}" for value, count in counts.items()))
        lines += ["", f"## Training ({self.training_settings_.get('preset', 'not trained')})", ""]
        settings = {key: value for key, value in self.training_settings_.items() if key != "stages"}
        lines += [f"- {key}: {value}" for key, value in settings.items()]
        for stage, config in sorted(self.training_settings_.get("stages", {}).items()):
            changed = ", ".join(f"{key} {value}" for key, value in config.items())
            lines.append(f"- stage {stage}: {changed}")
        for name, history in (self.history_ or {}).items():
            if len(history):
                last = history.iloc[-1].drop(["n_batches", "n_skipped"], errors="ignore")
                lines.append(f"- {name}, last epoch: " + ", ".join(f"{key} {value:.4g}" for key, value in last.items()))
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------ saving

    def save(self, dir_path: str, prefix: str | None = None, overwrite: bool = False, **kwargs) -> None:
        """Save the model (scvi-tools' files) to the folder ``dir_path``, written whole or not at all.

        The files go to a temporary folder beside ``dir_path`` that replaces it at the end, so an interrupted or
        failed save leaves ``dir_path`` as it was.

        Parameters
        ----------
        dir_path
            Folder to write.
        prefix
            File name prefix.
        overwrite
            Replace an existing ``dir_path``; it must then hold saved models only, as it is replaced as a whole.
        **kwargs
            Passed to :meth:`scvi.model.base.BaseModelClass.save` (``save_anndata``, ...).
        """
        folder = Path(dir_path)
        check_save_folder(folder, overwrite)
        with staged_folder(folder) as staging:
            super().save(str(staging), prefix=prefix, overwrite=True, **kwargs)

    @classmethod
    def load(cls, dir_path: str, adata: AnnData | None = None, prefix: str | None = None, **kwargs) -> CellPainTR:
        """Load a saved model, attached to ``adata`` or to the AnnData saved with it.

        Parameters
        ----------
        dir_path
            Folder written by :meth:`save`.
        adata
            Data to attach: the model's features in the same order, and only sources and labels the saved model
            was set up with (else ValueError). Default: the AnnData saved with the model
            (``save(..., save_anndata=True)``). Data of other sources is embedded with
            ``model.get_latent_representation(adata)`` or :func:`cpembed.tl.cellpaintr`, which use the
            unknown-source token. As :meth:`setup_anndata` does, loading adds the ``_scvi_*`` registration entries
            to ``adata``.
        prefix
            File name prefix used when saving.
        **kwargs
            Passed to :meth:`scvi.model.base.BaseModelClass.load` (``accelerator``, ``device``).
        """
        folder, file_prefix = Path(dir_path), prefix or ""
        model_file = folder / f"{file_prefix}{MODEL_FILE}"
        if not model_file.is_file():
            raise FileNotFoundError(
                f"No saved CellPainTR model at {model_file}: pass the folder written by model.save(dir_path)"
                f"{' and its prefix' if prefix else ''}."
            )
        registry = cls.load_registry(str(folder), prefix=prefix)
        if adata is None:
            if not (folder / f"{file_prefix}{ADATA_FILE}").is_file():
                raise ValueError(
                    f"{folder} holds no AnnData (the model was saved without save_anndata=True): pass the data to "
                    f"attach, CellPainTR.load({str(folder)!r}, adata=...)."
                )
        else:
            var_names = registry["field_registries"][REGISTRY_KEYS.X_KEY]["state_registry"][LayerField.COLUMN_NAMES_KEY]
            _check_same_features(adata.var_names, pd.Index(var_names))
            _check_registered_categories(adata, registry)
        return super().load(str(folder), adata=adata, prefix=prefix, **kwargs)


def _check_same_features(given: pd.Index, expected: pd.Index) -> None:
    """Raise a ValueError saying how the features ``given`` differ from the model's ``expected`` ones."""
    if given.equals(expected):
        return
    missing, extra = expected.difference(given, sort=False), given.difference(expected, sort=False)
    if len(missing) or len(extra):
        detail = (
            f"{len(missing)} of the model's features are missing (e.g. {list(missing[:3])}) and {len(extra)} are "
            f"not the model's (e.g. {list(extra[:3])})"
        )
    elif not given.is_unique:
        detail = f"adata repeats feature names, e.g. {list(given[given.duplicated()][:3])}"
    else:
        detail = "they are the model's features in another order"
    raise ValueError(
        f"adata has {len(given)} features and the model {len(expected)}: {detail}. Select the model's features in "
        "its order, adata[:, features] with features = model.adata.var_names (or the saved model's var_names); "
        "to embed data with another feature set, pass it to model.get_latent_representation(adata) or "
        "cpembed.tl.cellpaintr(adata, model=model), which match the features."
    )


def _as_model_features(values: np.ndarray, match: FeatureMatch) -> tuple[np.ndarray, np.ndarray | None]:
    """Wells ``values`` (the study's features) as the model's features, and the mask of those the study lacks.

    The mask is ``None`` when the study has the model's features in its order; missing features read as 0.
    """
    if match.is_identity:
        return values, None
    found = np.flatnonzero(match.columns >= 0)
    x = np.zeros((len(values), len(match.reference)), dtype=values.dtype)
    x[:, found] = values[:, match.columns[found]]
    return x, np.broadcast_to(match.columns < 0, x.shape).copy()


def _check_registered_categories(adata: AnnData, registry: Mapping) -> None:
    """Raise a ValueError naming the sources and labels of ``adata`` that a saved model's registry lacks."""
    setup = registry["setup_args"]
    fields = registry["field_registries"]
    for field, key, what in (
        (REGISTRY_KEYS.BATCH_KEY, setup["batch_key"], "sources"),
        (REGISTRY_KEYS.LABELS_KEY, setup["labels_key"], "labels"),
    ):
        if key is None:
            continue
        check_obs_keys(adata, key)
        known = set(fields[field]["state_registry"]["categorical_mapping"])
        unseen = sorted({value for value in adata.obs[key].unique() if value not in known}, key=str)
        if unseen:
            raise ValueError(
                f"adata.obs[{key!r}] holds {what} the saved model was not set up with: {unseen[:10]}. A loaded model "
                "is attached to data of its own sources and labels only: load it without adata (or with its "
                "training data) and embed these wells with model.get_latent_representation(adata) or "
                "cpembed.tl.cellpaintr(adata, model=model), which give unseen sources the unknown-source token."
            )


def _feature_group_ids(adata: AnnData) -> torch.Tensor:
    """Channel x compartment group id per feature, as :func:`cpembed.pp.feature_groups` labels them from the names."""
    labelled = feature_groups(AnnData(var=pd.DataFrame(index=adata.var_names)), copy=True)
    return torch.as_tensor(labelled.var["feature_group"].cat.codes.to_numpy(copy=True), dtype=torch.long)


def _pca_projection(
    matrix, n_components: int, seed: int, controls: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """Center, loadings (features x components) and mean squared projected norm of a PCA of the wells of ``matrix``.

    Fitted on at most :data:`PROJECTION_SAMPLE` wells drawn at random; non-finite values read as 0, as in training.
    With ``controls`` (a boolean flag per well) the components are whitened by the Ledoit-Wolf covariance of the
    sampled control wells in them, and the center is the controls' mean.
    """
    from sklearn.decomposition import PCA

    n_rows, n_features = matrix.shape
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n_rows, min(n_rows, PROJECTION_SAMPLE), replace=False))
    sample = read_rows(matrix, rows).astype(np.float64)
    n_components = min(n_components, n_features, len(rows) - 1)
    if n_components < 1:
        raise ValueError("CellPainTR needs at least two wells to fit the PCA its training compares with.")
    pca = PCA(n_components=n_components, random_state=seed).fit(sample)
    center, loadings, variance = pca.mean_, pca.components_.T, float(pca.explained_variance_.sum())
    if not variance > 0:
        raise ValueError(
            "The training profiles do not vary (every value is the same, or non-finite and read as 0): there is "
            "nothing to embed. Check the preprocessing of adata."
        )
    if controls is not None:
        from sklearn.covariance import LedoitWolf

        control_scores = (sample[controls[rows]] - center) @ loadings
        if len(control_scores) < 2:
            raise ValueError(
                f"The control-whitened projection needs at least two control wells among the {len(rows)} wells it "
                f"is fitted on, found {len(control_scores)}."
            )
        covariance = LedoitWolf().fit(control_scores)
        eigenvalues, eigenvectors = np.linalg.eigh(covariance.covariance_)
        if not eigenvalues.min() > 0:
            raise ValueError("The control wells do not vary: there is no covariance to whiten the projection by.")
        center = center + loadings @ covariance.location_
        loadings = loadings @ (eigenvectors / np.sqrt(eigenvalues))
        variance = float(np.square((sample - center) @ loadings).sum(axis=1).mean())
    return center, loadings, variance


def _merge_config(default: StageConfig, settings: StageSettings) -> StageConfig:
    if settings is None:
        return default
    if isinstance(settings, StageConfig):
        return settings
    return replace(default, **dict(settings))


def _default_precision(device, precision: str | None) -> str:
    if precision is not None:
        return precision
    return "bf16-mixed" if torch.device(device).type == "cuda" else "32-true"


@contextmanager
def _trainable(module: torch.nn.Module, parameters, rows: Sequence[int] | None = None) -> Iterator[None]:
    """Freeze every parameter of ``module`` except ``parameters``; with ``rows``, only those rows of them learn.

    Freezing happens before Lightning wraps the module, which keeps it valid under DDP. Row restriction zeroes the
    gradient of the other rows of each parameter (source-token tables, one row per token), so AdamW (weight
    decay 0) leaves them exactly as they were.
    """
    parameters = list(parameters)
    previous = {parameter: parameter.requires_grad for parameter in module.parameters()}
    keep = {id(parameter) for parameter in parameters}
    hooks = []
    try:
        for parameter in module.parameters():
            parameter.requires_grad_(id(parameter) in keep)
        if rows is not None:
            for parameter in parameters:
                row_mask = torch.zeros(parameter.shape[0], 1)
                row_mask[list(rows)] = 1.0
                hooks.append(parameter.register_hook(lambda grad, m=row_mask: grad * m.to(grad.device, grad.dtype)))
        yield
    finally:
        for hook in hooks:
            hook.remove()
        for parameter, requires_grad in previous.items():
            parameter.requires_grad_(requires_grad)
