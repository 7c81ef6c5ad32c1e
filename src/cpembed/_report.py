"""The cpembed report: preprocess profiles, embed them with every method, score the embeddings and write a folder.

:func:`run_report` is what ``cpembed run`` does; it only chains the library's functions (:func:`cpembed.pp.recipe_jump`,
:mod:`cpembed.tl`, :func:`cpembed.bm.benchmark`, :mod:`cpembed.pl`) and writes their results. It runs in two steps:
:func:`prepare_report` checks the input and preprocesses it (where bad input shows), :func:`write_report` embeds,
scores and writes the folder, whole or not at all.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

import cpembed as cpe
from cpembed._validation import check_obs_keys, control_flags, get_matrix

logger = logging.getLogger(__name__)

#: Methods in the order they run; harmony corrects the PCA embedding, computed first.
METHODS = ("baseline", "pca", "combat", "harmony", "sphering", "cellpaintr", "cwamsn")
#: Methods run by default: all but CWA-MSN, which needs images.
DEFAULT_METHODS = METHODS[:-1]
#: Where each method's embedding lives; ``"X"`` is the preprocessed features themselves.
EMBEDDING_KEYS = {
    "baseline": "X",
    "pca": "X_pca",
    "combat": "X_combat",
    "harmony": "X_harmony",
    "sphering": "X_sphering",
    "cellpaintr": "X_cellpaintr",
    "cwamsn": "X_cwamsn",
}
#: Files of the report folder.
RESULTS_CSV = "results.csv"
TABLE_PNG = "benchmark_table.png"
UMAP_PNG = "umap.png"
HISTORY_PNG = "training_history.png"
ADATA_H5AD = "embeddings.h5ad"
SUMMARY_MD = "report.md"
#: Every file a report folder may hold.
REPORT_FILES = (RESULTS_CSV, TABLE_PNG, UMAP_PNG, HISTORY_PNG, ADATA_H5AD, SUMMARY_MD)
#: ``.uns`` key of the benchmark table and its settings (see :func:`cpembed.bm.benchmark`).
BENCHMARK_KEY = "cpe_benchmark"
#: Default seconds of CellPainTR training on a CPU and on a GPU (see :class:`CellPainTRSettings`).
CPU_TIME_BUDGET = 600.0
GPU_TIME_BUDGET = 1800.0
#: Minibatches the timing probe of :func:`size_training` trains; the first (warm-up) is not counted.
PROBE_BATCHES = 5


@dataclass(frozen=True)
class CellPainTRSettings:
    """Size and training schedule of the CellPainTR model the report trains.

    The defaults are smaller and shorter than the paper's (``d_model=256``, four layers, 3 + 8 + 6 epochs at
    learning rates 1e-4 / 1e-5 / 1e-5) so that the whole report on BBBC021 (632 wells) finishes within minutes on a
    two-core CPU. With so few epochs the preset's learning rates barely move the stages 2-3 correction, so the
    stages use larger ones; this is the "cpu" size ``benchmarks/cellpaintr_quality.py`` scores on BBBC021 and on
    both simulator families.

    Before training, :func:`size_training` times a few minibatches and, when the whole schedule would take longer
    than ``time_budget`` seconds (default: :data:`CPU_TIME_BUDGET` on a CPU, :data:`GPU_TIME_BUDGET` on a GPU),
    trains the same epochs on a share of each epoch's minibatches, so that larger tables still finish in about the
    budget. ``time_budget=math.inf`` trains the whole schedule.
    """

    d_model: int = 64
    n_layers: int = 2
    d_mlp: int = 128
    filter_width: int = 16
    epochs: tuple[int, int, int] = (4, 4, 4)
    learning_rates: tuple[float, float, float] = (1e-3, 1e-3, 1e-3)
    batch_sizes: tuple[int, int, int] = (32, 32, 64)
    time_budget: float | None = None

    @classmethod
    def tiny(cls) -> CellPainTRSettings:
        """A model trained for a handful of minibatches: checks that the pipeline runs, not the model's quality."""
        return cls(d_model=16, n_layers=1, d_mlp=32, filter_width=8, epochs=(1, 2, 1))

    def model_kwargs(self) -> dict[str, int]:
        """Architecture as :class:`cpembed.model.CellPainTR` takes it."""
        return {
            "d_model": self.d_model,
            "n_layers": self.n_layers,
            "d_mlp": self.d_mlp,
            "filter_width": self.filter_width,
        }

    def train_kwargs(self) -> dict[str, dict[str, float]]:
        """Stage schedules as :meth:`cpembed.model.CellPainTR.train` takes them."""
        schedules = zip(self.epochs, self.learning_rates, self.batch_sizes, strict=True)
        return {
            f"stage{stage}": {"max_epochs": epochs, "lr": lr, "batch_size": batch_size}
            for stage, (epochs, lr, batch_size) in enumerate(schedules, start=1)
        }


@dataclass(frozen=True)
class CWAMSNSettings:
    """Size and training length of the CWA-MSN image model the report trains.

    The defaults, a three-layer ViT of width 64 on 32-pixel crops, are those of ``benchmarks/cwamsn_quality.py``:
    small enough to train on a CPU, where the paper's ViT-S/16 on 224-pixel crops for 100 epochs needs a GPU.
    """

    image_size: int = 32
    patch_size: int = 8
    embed_dim: int = 64
    depth: int = 3
    num_heads: int = 4
    hidden_dim: int = 256
    out_dim: int = 64
    n_prototypes: int = 64
    focal_size: int = 16
    n_focal_views: int = 6
    epochs: int = 20

    @classmethod
    def tiny(cls) -> CWAMSNSettings:
        """A one-layer model trained for one epoch: checks that the pipeline runs, not the model's quality."""
        return cls(16, 8, 16, 1, 2, 32, 8, 8, 8, 2, epochs=1)

    def model_kwargs(self) -> dict[str, int]:
        """Architecture as :class:`cpembed.model.CWAMSN` takes it."""
        return {name: value for name, value in asdict(self).items() if name != "epochs"}


@dataclass(frozen=True)
class ReportConfig:
    """Annotation keys and options of :func:`run_report`; the defaults fit :func:`cpembed.datasets.bbbc021`.

    Attributes
    ----------
    batch_key
        ``.obs`` column of the batch (source, or imaging batch) the methods correct.
    plate_key
        ``.obs`` column of the plate (per-plate normalisation; mAP negatives).
    perturbation_key
        ``.obs`` column of the perturbation (mAP replicates; CellPainTR's contrastive positives).
    control_key
        Boolean ``.obs`` column, ``True`` for negative-control wells.
    moa_key
        ``.obs`` column of the mechanism of action: the label of the bio metrics and the second UMAP colouring.
        ``None`` uses the perturbation.
    well_key
        ``.obs`` column of the well position (mAP ignores replicates at the same position; CWA-MSN joins images
        to profiles on plate and well). ``None`` when absent.
    concentration_key
        ``.obs`` column of the concentration. With ``moa_key`` it adds the 1-NN MoA accuracies NSC and NSCB
        (:func:`cpembed.bm.moa_accuracy`) to the table.
    methods
        Methods to run, from :data:`METHODS`.
    n_pcs
        Principal components of the PCA embedding (and of Harmony's input); 50, scanpy's default.
    cellpaintr
        CellPainTR size and epochs.
    images
        Image AnnData (``.h5ad``, rows are fields with an image store, see :func:`cpembed.io.build_image_store`)
        for CWA-MSN; its ``obs`` needs ``plate_key``, ``well_key`` and ``perturbation_key`` matching the profiles.
    cwamsn
        CWA-MSN size and epochs.
    null_size
        Random rankings of the mAP null distributions (10,000, Arevalo et al. 2024).
    seed
        Seed of PCA, Harmony, CellPainTR and the UMAPs.
    n_jobs
        Parallel workers of the benchmark's random forests and Leiden runs.
    progress
        Show progress bars.
    """

    batch_key: str = "Metadata_Batch"
    plate_key: str = "Metadata_Plate"
    perturbation_key: str = "Metadata_Compound"
    control_key: str = "Metadata_is_negcon"
    moa_key: str | None = "Metadata_moa"
    well_key: str | None = "Metadata_Well"
    concentration_key: str | None = None
    methods: tuple[str, ...] = DEFAULT_METHODS
    n_pcs: int = 50
    cellpaintr: CellPainTRSettings = field(default_factory=CellPainTRSettings)
    images: Path | None = None
    cwamsn: CWAMSNSettings = field(default_factory=CWAMSNSettings)
    null_size: int = 10_000
    seed: int = 0
    n_jobs: int = 1
    progress: bool = True

    @property
    def label_key(self) -> str:
        """The biological label the bio metrics score."""
        return self.moa_key or self.perturbation_key

    def obs_keys(self) -> list[str]:
        """Every ``.obs`` column the report reads."""
        keys = [self.batch_key, self.plate_key, self.perturbation_key, self.control_key]
        return keys + [key for key in (self.moa_key, self.well_key, self.concentration_key) if key is not None]


def parse_methods(text: str) -> tuple[str, ...]:
    """Turn ``"pca,harmony"`` into ``("pca", "harmony")``, raising a ValueError naming unknown methods."""
    methods = tuple(name.strip().lower() for name in text.split(",") if name.strip())
    unknown = [name for name in methods if name not in METHODS]
    if unknown or not methods:
        raise ValueError(f"Unknown methods {unknown or [text]}; choose from {', '.join(METHODS)}.")
    return methods


def check_inputs(adata: AnnData, config: ReportConfig) -> None:
    """Raise before any work when a key, the control column, the number of wells or a method does not fit ``adata``."""
    from cpembed.bm._benchmark import check_enough_wells

    parse_methods(",".join(config.methods))
    check_obs_keys(adata, *config.obs_keys())
    check_enough_wells(int((~control_flags(adata, config.control_key)).sum()))
    if "cwamsn" in config.methods:
        if config.images is None:
            raise ValueError("Method 'cwamsn' embeds images: pass an image AnnData (`images=`, `--images`).")
        if config.well_key is None:
            raise ValueError("Method 'cwamsn' joins images to profiles by plate and well: set the well key.")
        if not Path(config.images).is_file():
            raise FileNotFoundError(f"Image AnnData {config.images} does not exist.")


def check_output_folder(out: str | Path) -> None:
    """Raise before any work when ``out`` cannot become a report folder.

    ``out`` may be missing (it is created) or an earlier report folder (it is replaced as a whole); a file, a path
    below a file, a folder holding other files than a report's or the working folder, or a place without write
    permission is refused.
    """
    out = Path(out)
    if Path.cwd().resolve().is_relative_to(out.resolve()):
        raise ValueError(
            f"The report folder {out} is the working folder or holds it, which the report would replace. Choose a "
            "subfolder, e.g. report/."
        )
    existing = next(path for path in (out, *out.absolute().parents) if path.exists())
    if not existing.is_dir():
        where = "is a file" if existing == out else f"cannot be created: {existing} is a file"
        raise NotADirectoryError(f"The report folder {out} {where}. Choose a folder path for the report.")
    if existing == out:
        others = sorted(path.name for path in out.iterdir() if path.name not in REPORT_FILES)
        if others:
            raise FileExistsError(
                f"The report folder {out} holds files that are not part of a report ({', '.join(others[:5])}), "
                "which the new report would delete. Choose a new or empty folder."
            )
    if not os.access(existing if existing != out else out.absolute().parent, os.W_OK):
        raise PermissionError(f"The report folder {out} cannot be written: no write permission in {existing}.")


@dataclass(frozen=True)
class PreparedProfiles:
    """Input of :func:`write_report`, made by :func:`prepare_report`.

    Attributes
    ----------
    adata
        The preprocessed copy of the raw profiles; :func:`write_report` adds the embeddings to it.
    raw_shape
        Wells and features of the raw profiles.
    timings
        Seconds of each step so far.
    """

    adata: AnnData
    raw_shape: tuple[int, int]
    timings: dict[str, float]


def prepare_report(adata: AnnData, config: ReportConfig) -> PreparedProfiles:
    """Check ``adata`` against ``config`` and preprocess a copy of it with :func:`cpembed.pp.recipe_jump`.

    Every problem of the input (a missing key, a non-boolean control column, a plate the preprocessing cannot
    normalise) shows here, before the long steps; ``adata`` itself is not changed.
    """
    check_inputs(adata, config)
    timings: dict[str, float] = {}
    raw_shape = adata.shape
    adata = adata.copy()
    with _timed("preprocessing (recipe_jump)", timings):
        cpe.pp.recipe_jump(adata, config.plate_key, config.control_key)
    return PreparedProfiles(adata, raw_shape, timings)


def run_report(adata: AnnData, config: ReportConfig, out: str | Path) -> pd.DataFrame:
    """Preprocess, embed with every method, benchmark and write the report folder.

    Steps: :func:`cpembed.pp.recipe_jump`; the selected methods (preprocessed features, :func:`scanpy.pp.pca`,
    :func:`cpembed.tl.combat`, :func:`cpembed.tl.harmony` on the PCA, :func:`cpembed.tl.sphering`, CellPainTR and
    CWA-MSN); :func:`cpembed.bm.benchmark` (and :func:`cpembed.bm.moa_accuracy` with a concentration key); the
    figures. Each step is logged with its duration.

    Parameters
    ----------
    adata
        Raw well profiles (wells × CellProfiler features) with the ``.obs`` columns named in ``config``. It is not
        changed: the report works on a copy.
    config
        Keys and options.
    out
        Folder to write to: created, or replaced as a whole when it holds an earlier report (see
        :func:`write_report`).

    Returns
    -------
    The results table, one row per method (index: method names): the columns of :func:`cpembed.bm.benchmark`,
    plus ``nsc`` and ``nscb`` with a concentration key. The folder receives ``results.csv``,
    ``benchmark_table.png``, ``umap.png``, ``training_history.png`` (when CellPainTR ran), ``embeddings.h5ad``
    (the preprocessed profiles with every embedding in ``.obsm``, the table and its settings in
    ``.uns["cpe_benchmark"]`` as :func:`cpembed.bm.benchmark` stores them, with the method names as index, and the
    schedule CellPainTR trained in ``.uns["X_cellpaintr"]["params"]["training"]``) and ``report.md``.
    """
    check_output_folder(out)
    return write_report(prepare_report(adata, config), config, out)


def write_report(prepared: PreparedProfiles, config: ReportConfig, out: str | Path) -> pd.DataFrame:
    """Embed the prepared profiles with every method, benchmark them and write the report folder ``out``.

    The files are written to a temporary folder beside ``out`` that replaces ``out`` at the end, so ``out`` holds
    one whole report, the earlier one or this one, never a mix; a failed or interrupted run leaves it as it was.
    Returns the results table (see :func:`run_report`).
    """
    check_output_folder(out)
    from cpembed._files import staged_folder

    adata, timings = prepared.adata, dict(prepared.timings)
    histories = {}
    for method in (name for name in METHODS if name in config.methods):
        with _timed(method, timings):
            history = _EMBEDDERS[method](adata, config)
        if history is not None:
            histories[method] = history
    with _timed("benchmark", timings):
        table = score_embeddings(adata, config)
    with staged_folder(out) as folder:
        with _timed("figures", timings):
            figures = draw_figures(adata, table, histories, config, folder)
        table.to_csv(folder / RESULTS_CSV)
        adata.write_h5ad(folder / ADATA_H5AD)
        summary = summary_markdown(prepared.raw_shape, adata, config, table, timings, figures)
        (folder / SUMMARY_MD).write_text(summary)
    logger.info("report written to %s", out)
    return table


@contextmanager
def _timed(step: str, timings: dict[str, float]) -> Iterator[None]:
    logger.info("%s ...", step)
    start = time.perf_counter()
    yield
    timings[step] = time.perf_counter() - start
    logger.info("%s done in %.1f s", step, timings[step])


# ---------------------------------------------------------------------------------------------------- methods


def _baseline(adata: AnnData, config: ReportConfig) -> None:
    """The preprocessed features in ``adata.X`` are the baseline; nothing to compute."""


def _pca(adata: AnnData, config: ReportConfig) -> None:
    import scanpy as sc

    n_comps = min(config.n_pcs, adata.n_obs - 1, adata.n_vars - 1)
    sc.pp.pca(adata, n_comps=n_comps, random_state=config.seed)


def _combat(adata: AnnData, config: ReportConfig) -> None:
    cpe.tl.combat(adata, config.batch_key)


def _harmony(adata: AnnData, config: ReportConfig) -> None:
    if EMBEDDING_KEYS["pca"] not in adata.obsm:
        _pca(adata, config)
    cpe.tl.harmony(adata, config.batch_key, basis=EMBEDDING_KEYS["pca"], random_state=config.seed)


def _sphering(adata: AnnData, config: ReportConfig) -> None:
    cpe.tl.sphering(adata, config.control_key)


def _cellpaintr(adata: AnnData, config: ReportConfig) -> dict[str, pd.DataFrame]:
    """Train CellPainTR (compounds as contrastive positives), sized to the time budget, and embed.

    Returns the per-stage losses; the schedule it trained goes to ``adata.uns["X_cellpaintr"]["params"]["training"]``.
    """
    settings = config.cellpaintr
    model, preset = _untrained_cellpaintr(adata, config, "auto")
    size = size_training(adata, config, preset)
    logger.info("CellPainTR: %s", size.describe())
    share = {} if size.fraction == 1 else {"limit_train_batches": size.fraction}
    model.train(
        **settings.train_kwargs(),
        preset=preset,
        seed=config.seed,
        enable_progress_bar=config.progress,
        simple_progress_bar=False,  # Lightning's bar: moves every minibatch, with the epoch's remaining time
        enable_model_summary=False,
        logger=False,
        **share,
    )
    key = EMBEDDING_KEYS["cellpaintr"]
    cpe.tl.cellpaintr(adata, model=model, key_added=key)
    adata.uns[key]["params"]["training"] = {
        "epochs": np.asarray(settings.epochs),
        "learning_rates": np.asarray(settings.learning_rates),
        "batch_sizes": np.asarray(settings.batch_sizes),
        "fraction_of_each_epoch": size.fraction,
        "time_budget_s": size.budget,
        "estimated_s": size.estimated_seconds,
    }
    return model.history_


def _untrained_cellpaintr(adata: AnnData, config: ReportConfig, preset: str):
    """A fresh CellPainTR with the report's architecture (on a view of its own: scvi-tools adds columns)."""
    from cpembed.tl._cellpaintr import untrained_model

    model_kwargs = {**config.cellpaintr.model_kwargs(), "seed": config.seed}
    return untrained_model(
        adata, None, config.batch_key, config.perturbation_key, None, preset, model_kwargs, config.control_key
    )


@dataclass(frozen=True)
class TrainingSize:
    """How long CellPainTR's schedule takes on this table and device, and the share of it that fits the budget.

    Attributes
    ----------
    n_wells, n_features
        Size of the training table.
    device
        ``"CPU"`` or ``"GPU"``.
    seconds_per_well
        Training time per well, timed by :func:`probe_seconds_per_well`.
    full_seconds
        Estimated time of the whole schedule: every epoch of every stage passes over every well once.
    budget
        Seconds the training may take.
    fraction
        Share of each epoch's minibatches trained (Lightning's ``limit_train_batches``): 1 when the schedule fits
        the budget, else the budget over the estimate, but at least two minibatches per epoch.
    """

    n_wells: int
    n_features: int
    device: str
    seconds_per_well: float
    full_seconds: float
    budget: float
    fraction: float

    @property
    def estimated_seconds(self) -> float:
        """Estimated training time with :attr:`fraction`."""
        return self.full_seconds * self.fraction

    def describe(self) -> str:
        """One line for the log: the estimate, and how the schedule was cut to fit the budget."""
        line = (
            f"{self.n_wells:,} wells x {self.n_features} features on the {self.device}, "
            f"{1e3 * self.seconds_per_well:.2g} ms per well: training should take about "
            f"{_minutes(self.estimated_seconds)}"
        )
        if self.fraction == 1:
            return f"{line} (budget {_minutes(self.budget)})."
        return (
            f"{line}: the whole schedule would take {_minutes(self.full_seconds)}, over the budget of "
            f"{_minutes(self.budget)}, so each epoch trains {self.fraction:.0%} of its minibatches."
        )


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def size_training(adata: AnnData, config: ReportConfig, preset: str) -> TrainingSize:
    """Time CellPainTR (``preset``) on ``adata`` and fit its schedule (``config.cellpaintr``) to the time budget."""
    import torch

    settings = config.cellpaintr
    gpu = torch.cuda.is_available()
    budget = settings.time_budget
    if budget is None:
        budget = GPU_TIME_BUDGET if gpu else CPU_TIME_BUDGET
    seconds_per_well = probe_seconds_per_well(adata, config, preset)
    return fit_to_budget(settings, adata.shape, seconds_per_well, budget, "GPU" if gpu else "CPU")


def fit_to_budget(
    settings: CellPainTRSettings, shape: tuple[int, int], seconds_per_well: float, budget: float, device: str
) -> TrainingSize:
    """The :class:`TrainingSize` of ``settings`` on a wells x features table trained at ``seconds_per_well``."""
    n_wells, n_features = shape
    full_seconds = sum(settings.epochs) * n_wells * seconds_per_well
    two_batches = min(1.0, 2 * max(settings.batch_sizes) / n_wells)
    fraction = 1.0 if full_seconds <= budget else max(budget / full_seconds, two_batches)
    return TrainingSize(n_wells, n_features, device, seconds_per_well, full_seconds, budget, fraction)


def probe_seconds_per_well(adata: AnnData, config: ReportConfig, preset: str) -> float:
    """Seconds per well of CellPainTR training, timed on :data:`PROBE_BATCHES` minibatches of a throwaway model.

    The model (with ``preset``'s architecture), device and stage 1 minibatch size are the report's; the first
    minibatch (warm-up) is not counted.
    """
    from lightning.pytorch.callbacks import Callback

    class StepTimer(Callback):
        def __init__(self) -> None:
            self.seconds: list[float] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.seconds.append(time.perf_counter() - self.start)

    timer = StepTimer()
    batch_size = config.cellpaintr.batch_sizes[0]
    model, _ = _untrained_cellpaintr(adata, config, preset)
    model.train(
        stage1={"max_epochs": 1, "batch_size": batch_size},
        stages=(1,),
        preset=preset,
        seed=config.seed,
        limit_train_batches=PROBE_BATCHES,
        callbacks=[timer],
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
    )
    return float(np.median(timer.seconds[1:] or timer.seconds)) / batch_size


def _cwamsn(adata: AnnData, config: ReportConfig) -> None:
    """Train CWA-MSN on the images, average the image embeddings per well and align them with the profiles."""
    import anndata as ad

    images = ad.read_h5ad(config.images)
    check_obs_keys(images, config.plate_key, config.well_key, config.perturbation_key)
    well_id = "plate_well"
    images.obs[well_id] = _plate_well(images.obs, config)
    cpe.tl.cwamsn(
        images,
        config.perturbation_key,
        well_id,
        plate_key=config.plate_key,
        batch_key=config.batch_key if config.batch_key in images.obs else None,
        max_epochs=config.cwamsn.epochs,
        model_kwargs={**config.cwamsn.model_kwargs(), "seed": config.seed},
        enable_progress_bar=config.progress,
        key_added=EMBEDDING_KEYS["cwamsn"],
    )
    wells = cpe.pp.aggregate(images, by=well_id, obsm_key=EMBEDDING_KEYS["cwamsn"])
    profile_wells = _plate_well(adata.obs, config)
    missing = profile_wells[~profile_wells.isin(wells.obs_names)]
    if len(missing):
        raise ValueError(f"{len(missing)} profile wells have no image, e.g. {list(missing[:3])}.")
    adata.obsm[EMBEDDING_KEYS["cwamsn"]] = wells[profile_wells.to_numpy()].X


def _plate_well(obs: pd.DataFrame, config: ReportConfig) -> pd.Series:
    return obs[config.plate_key].astype(str) + "/" + obs[config.well_key].astype(str)


_EMBEDDERS: Mapping[str, Callable[[AnnData, ReportConfig], dict | None]] = {
    "baseline": _baseline,
    "pca": _pca,
    "combat": _combat,
    "harmony": _harmony,
    "sphering": _sphering,
    "cellpaintr": _cellpaintr,
    "cwamsn": _cwamsn,
}


# ---------------------------------------------------------------------------------------------------- scores


def score_embeddings(adata: AnnData, config: ReportConfig) -> pd.DataFrame:
    """Benchmark every embedding; one row per method, named by method."""
    methods = [name for name in METHODS if name in config.methods]
    table = cpe.bm.benchmark(
        adata,
        [EMBEDDING_KEYS[name] for name in methods],
        batch_key=config.batch_key,
        label_key=config.label_key,
        perturbation_key=config.perturbation_key,
        plate_key=config.plate_key,
        control_key=config.control_key,
        well_key=config.well_key,
        null_size=config.null_size,
        n_jobs=config.n_jobs,
        progress=config.progress,
        key_added=BENCHMARK_KEY,
    )
    table.index = pd.Index(methods, name="method")
    if config.moa_key is not None and config.concentration_key is not None:
        table = table.join(_moa_accuracies(adata, methods, config))
        adata.uns[BENCHMARK_KEY]["params"]["concentration_key"] = config.concentration_key
    adata.uns[BENCHMARK_KEY]["results"] = table
    return table


def _moa_accuracies(adata: AnnData, methods: list[str], config: ReportConfig) -> pd.DataFrame:

    obs = adata.obs
    rows = {}
    for name in methods:
        accuracy = cpe.bm.moa_accuracy(
            get_matrix(adata, obsm_key=EMBEDDING_KEYS[name]),
            obs[config.perturbation_key].to_numpy(),
            obs[config.concentration_key].to_numpy(),
            moa=obs[config.moa_key].to_numpy(),
            batch=obs[config.batch_key].to_numpy(),
            is_control=obs[config.control_key].to_numpy(),
        )
        rows[name] = {"nsc": accuracy.nsc, "nscb": accuracy.nscb}
    return pd.DataFrame.from_dict(rows, orient="index")


# ---------------------------------------------------------------------------------------------------- figures


def draw_figures(
    adata: AnnData, table: pd.DataFrame, histories: dict[str, dict], config: ReportConfig, out: Path
) -> dict[str, str]:
    """Write the benchmark table, the UMAP grid and the training curves; return caption -> file name."""
    figures = {"Benchmark scores (higher is better; methods sorted by overall score)": TABLE_PNG}
    cpe.pl.benchmark_table(table, save=str(out / TABLE_PNG), show=False)
    methods = list(table.index)
    colourings = list(dict.fromkeys([config.batch_key, config.label_key]))
    cpe.pl.umap(
        adata,
        [EMBEDDING_KEYS[name] for name in methods],
        colourings,
        control_key=config.control_key,
        titles=methods,
        random_state=config.seed,
        save=str(out / UMAP_PNG),
        show=False,
    )
    figures[f"UMAP of each embedding, coloured by {' and by '.join(colourings)} (controls in red)"] = UMAP_PNG
    if "cellpaintr" in histories:
        cpe.pl.training_history(histories["cellpaintr"], save=str(out / HISTORY_PNG), show=False)
        figures["CellPainTR training losses per stage"] = HISTORY_PNG
    return figures


# ---------------------------------------------------------------------------------------------------- summary


def summary_markdown(
    raw_shape: tuple[int, int],
    adata: AnnData,
    config: ReportConfig,
    table: pd.DataFrame,
    timings: dict[str, float],
    figures: dict[str, str],
) -> str:
    """The report's Markdown page: data sizes, what ran and how long, the results table and the figures."""
    obs = adata.obs
    sizes = {
        "wells": raw_shape[0],
        "raw features": raw_shape[1],
        "features after preprocessing": adata.n_vars,
        f"batches ({config.batch_key})": obs[config.batch_key].nunique(),
        f"plates ({config.plate_key})": obs[config.plate_key].nunique(),
        f"perturbations ({config.perturbation_key})": obs[config.perturbation_key].nunique(),
        f"control wells ({config.control_key})": int(obs[config.control_key].sum()),
    }
    if config.moa_key is not None:
        sizes[f"MoA classes ({config.moa_key})"] = obs[config.moa_key].nunique()
    cp = config.cellpaintr
    lines = [
        "# cpembed report",
        "",
        "## Data",
        "",
        _markdown_table(pd.DataFrame({"value": sizes}).rename_axis("")),
        "",
        "## What ran",
        "",
        f"Methods: {', '.join(table.index)}. Labels of the bio metrics: `{config.label_key}`; "
        f"batch: `{config.batch_key}`; mAP null size {config.null_size}.",
    ]
    if "cellpaintr" in config.methods:
        params = adata.uns[EMBEDDING_KEYS["cellpaintr"]]["params"]
        width = adata.obsm[EMBEDDING_KEYS["cellpaintr"]].shape[1]
        projection = f", {params['projection']} projection" if params.get("linear_path") else ""
        lines.append(
            f"CellPainTR ({params['preset']} preset, chosen by `preset='auto'`; {width} dimensions{projection}): "
            f"d_model={cp.d_model}, n_layers={cp.n_layers}, d_mlp={cp.d_mlp}, "
            f"epochs per stage {'/'.join(map(str, cp.epochs))}, "
            f"learning rates {'/'.join(map(str, cp.learning_rates))}, "
            f"batch sizes {'/'.join(map(str, cp.batch_sizes))}, "
            f"{_trained_share(adata.uns[EMBEDDING_KEYS['cellpaintr']]['params']['training'])}."
        )
    total = sum(timings.values())
    steps = pd.DataFrame({"seconds": {**timings, "total": total}}).rename_axis("step").round(1)
    lines += ["", _markdown_table(steps), "", "## Results", "", _markdown_table(table.T.round(3)), ""]
    lines += ["## Figures", ""]
    for caption, filename in figures.items():
        lines += [f"**{caption}**", "", f"![{caption}]({filename})", ""]
    lines.append(
        f"Embeddings and preprocessed profiles: [{ADATA_H5AD}]({ADATA_H5AD}); table: [{RESULTS_CSV}]({RESULTS_CSV})."
    )
    return "\n".join(lines) + "\n"


def _trained_share(training: Mapping) -> str:
    """How much of each epoch CellPainTR trained, and why."""
    fraction, budget = float(training["fraction_of_each_epoch"]), float(training["time_budget_s"])
    if fraction == 1:
        return f"whole epochs (estimated {_minutes(float(training['estimated_s']))}, budget {_minutes(budget)})"
    return f"{fraction:.0%} of each epoch's minibatches to fit the time budget of {_minutes(budget)}"


def _markdown_table(frame: pd.DataFrame) -> str:
    """A DataFrame as a GitHub Markdown table, index first."""
    header = [str(frame.index.name or ""), *map(str, frame.columns)]
    rows = [[str(index), *map(_cell, values)] for index, values in zip(frame.index, frame.to_numpy(), strict=True)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _cell(value: object) -> str:
    if isinstance(value, float | np.floating):
        return "–" if np.isnan(value) else f"{value:g}"
    return str(value)
