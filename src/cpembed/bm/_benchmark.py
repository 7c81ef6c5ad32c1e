"""The benchmark table: every metric of CellPainTR's Table 1 and the JUMP benchmark for several embeddings."""

from __future__ import annotations

import inspect
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from types import SimpleNamespace

import numpy as np
import pandas as pd
from anndata import AnnData
from tqdm.auto import tqdm

from cpembed._validation import (
    check_obs_complete,
    check_obs_keys,
    check_obsm_keys,
    control_flags,
    get_finite_matrix,
    matrix_name,
)

from ._aggregate import CELLPAINTR_SCORES, JUMP_SCORES
from ._classifier import batch_classifier, bio_information
from ._graph_connectivity import graph_connectivity
from ._kbet import kbet_per_label
from ._leiden import DEFAULT_RESOLUTIONS, leiden_nmi_ari
from ._lisi import clisi, ilisi
from ._map import MAPResult, UndefinedMAPError, map_control, map_no_rep
from ._neighbors import Metric, NeighborsResult, Search, nearest_neighbors, resolve_search
from ._silhouette import SAMPLED_SILHOUETTES, silhouette_batch, silhouette_label

logger = logging.getLogger(__name__)

#: Class given to negative-control wells by the "with controls" bio-information classifier.
CONTROL_CLASS = "negative control"

#: Metric columns of the table, in order (CellPainTR Table 1, then the JUMP benchmark's extras).
METRIC_COLUMNS = (
    "graph_connectivity",
    "silhouette_batch",
    "batch_classifier_control",
    "batch_classifier_no_control",
    "leiden_nmi",
    "leiden_ari",
    "silhouette_label",
    "map_control",
    "map_no_rep",
    "bio_info_control",
    "bio_info_no_control",
    "kbet",
    "ilisi",
    "clisi",
    "map_control_fraction_retrieved",
    "map_no_rep_fraction_retrieved",
)
#: Aggregate columns, in order.
SCORE_COLUMNS = ("batch_score", "bio_score", "overall_score", "total_score")


@dataclass(frozen=True)
class BenchmarkSettings:
    """Parameters shared by every embedding of one :func:`benchmark` call (documented there)."""

    metric: Metric
    neighbors: Search
    graph_neighbors: int
    kbet_neighbors: int
    lisi_neighbors: int
    resolutions: tuple[float, ...]
    leiden_seed: int
    classifier_seed: int
    map_distance: str
    null_size: int
    threshold: float
    n_jobs: int


@dataclass(frozen=True)
class _Wells:
    """Per-well annotations read once from ``adata.obs``."""

    batch: np.ndarray
    label: np.ndarray
    perturbation: np.ndarray
    plate: np.ndarray
    is_control: np.ndarray
    well: np.ndarray | None


class _EmbeddingScores:
    """Computes the metrics of one embedding; the neighbour search runs once and is shared by the graph metrics."""

    def __init__(
        self, X: np.ndarray, wells: _Wells, settings: BenchmarkSettings, kept: np.ndarray, n_neighbors: int
    ) -> None:
        self.X = X
        self.wells = wells
        self.settings = settings
        self.kept = kept
        self.n_neighbors = n_neighbors

    @cached_property
    def neighbors(self) -> NeighborsResult:
        s = self.settings
        return nearest_neighbors(
            self.X[self.kept], self.n_neighbors, metric=s.metric, search=s.neighbors, n_jobs=s.n_jobs
        )

    @property
    def _silhouette_options(self) -> dict:
        n_samples = SAMPLED_SILHOUETTES if self.settings.neighbors == "approximate" else None
        return {"metric": self.settings.metric, "n_samples": n_samples}

    def _subset(self, k: int) -> NeighborsResult:
        return self.neighbors.subset(k)

    def graph_connectivity(self) -> dict[str, float]:
        subset = self._subset(self.settings.graph_neighbors)
        return {"graph_connectivity": graph_connectivity(subset, self.wells.label[self.kept])}

    def silhouette_batch(self) -> dict[str, float]:
        kept, w = self.kept, self.wells
        score = silhouette_batch(self.X[kept], w.label[kept], w.batch[kept], **self._silhouette_options)
        return {"silhouette_batch": score}

    def silhouette_label(self) -> dict[str, float]:
        score = silhouette_label(self.X[self.kept], self.wells.label[self.kept], **self._silhouette_options)
        return {"silhouette_label": score}

    def leiden(self) -> dict[str, float]:
        s = self.settings
        scores = leiden_nmi_ari(
            self._subset(s.graph_neighbors),
            self.wells.label[self.kept],
            resolutions=s.resolutions,
            seed=s.leiden_seed,
            n_jobs=s.n_jobs,
        )
        return {"leiden_nmi": scores.nmi, "leiden_ari": scores.ari}

    def kbet(self) -> dict[str, float]:
        kept, w = self.kept, self.wells
        return {"kbet": kbet_per_label(self._subset(self.settings.kbet_neighbors), w.batch[kept], w.label[kept])}

    def lisi(self) -> dict[str, float]:
        kept, w = self.kept, self.wells
        subset = self._subset(self.settings.lisi_neighbors)
        return {"ilisi": ilisi(subset, w.batch[kept]), "clisi": clisi(subset, w.label[kept])}

    def batch_classifiers(self) -> dict[str, float]:
        w, options = self.wells, self._classifier_options
        treated = ~w.is_control
        return {
            "batch_classifier_control": batch_classifier(self.X, w.batch, **options),
            "batch_classifier_no_control": batch_classifier(self.X[treated], w.batch[treated], **options),
        }

    def bio_classifiers(self) -> dict[str, float]:
        w, options = self.wells, self._classifier_options
        treated = ~w.is_control
        with_control_class = np.where(w.is_control, CONTROL_CLASS, w.label.astype(str))
        return {
            "bio_info_control": bio_information(self.X, with_control_class, **options),
            "bio_info_no_control": bio_information(self.X[treated], w.label[treated].astype(str), **options),
        }

    @property
    def _classifier_options(self) -> dict:
        return {"random_state": self.settings.classifier_seed, "n_jobs": self.settings.n_jobs}

    def map_control(self) -> dict[str, float]:
        return self._map_scores("map_control", map_control, well=self.wells.well)

    def map_no_rep(self) -> dict[str, float]:
        return self._map_scores("map_no_rep", map_no_rep)

    def _map_scores(self, name: str, setting: Callable[..., MAPResult], **kwargs) -> dict[str, float]:
        """The mAP of one retrieval setting and its fraction retrieved; both NaN where no well can be scored."""
        try:
            result = setting(self.X, *self._map_arrays, **kwargs, **self._map_options)
        except UndefinedMAPError:
            return {name: np.nan, f"{name}_fraction_retrieved": np.nan}
        return {name: result.mean_average_precision, f"{name}_fraction_retrieved": result.fraction_retrieved}

    @property
    def _map_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.wells.perturbation, self.wells.plate, self.wells.is_control

    @property
    def _map_options(self) -> dict:
        s = self.settings
        return {"distance": s.map_distance, "null_size": s.null_size, "threshold": s.threshold}


#: Each step of the benchmark and the columns it fills, in the order they run.
_STEPS: dict[str, tuple[str, ...]] = {
    "graph_connectivity": ("graph_connectivity",),
    "leiden": ("leiden_nmi", "leiden_ari"),
    "kbet": ("kbet",),
    "lisi": ("ilisi", "clisi"),
    "silhouette_batch": ("silhouette_batch",),
    "silhouette_label": ("silhouette_label",),
    "batch_classifiers": ("batch_classifier_control", "batch_classifier_no_control"),
    "bio_classifiers": ("bio_info_control", "bio_info_no_control"),
    "map_control": ("map_control", "map_control_fraction_retrieved"),
    "map_no_rep": ("map_no_rep", "map_no_rep_fraction_retrieved"),
}
#: The graph steps and the setting that holds the neighbours each needs.
_NEIGHBOR_SETTINGS = {
    "graph_connectivity": "graph_neighbors",
    "leiden": "graph_neighbors",
    "kbet": "kbet_neighbors",
    "lisi": "lisi_neighbors",
}
_SHARED_LABEL = (
    "in adata.obs[{label_key!r}] (batches from adata.obs[{batch_key!r}]). Use a label that several wells in several "
    "batches share, such as the MoA"
)
_REPLICATES = "has two or more wells in adata.obs[{perturbation_key!r}] (controls from adata.obs[{control_key!r}])"
#: Why a metric comes out NaN, formatted with the benchmark's .obs keys: the metrics that skip the labels they cannot
#: score (too small, seen in one batch, without replicates or negatives), and skipped them all.
_NAN_CAUSES = {
    "silhouette_batch": "no label has wells in two or more batches (and more wells than batches) " + _SHARED_LABEL,
    "kbet": "no label has 10 or more wells in two or more batches " + _SHARED_LABEL,
    "map_control": "no perturbation outside the controls " + _REPLICATES,
    "map_no_rep": (
        "no perturbation outside the controls " + _REPLICATES + " with, on a replicate's plate (adata.obs"
        "[{plate_key!r}]), a well of another perturbation. Score more wells, or more perturbations per plate"
    ),
}


def benchmark(
    adata: AnnData,
    embeddings: str | Sequence[str] = "X",
    *,
    batch_key: str,
    label_key: str,
    perturbation_key: str,
    plate_key: str,
    control_key: str,
    well_key: str | None = None,
    wells: np.ndarray | None = None,
    metrics: Sequence[str] | None = None,
    metric: Metric = "euclidean",
    neighbors: Search = "auto",
    exclude_controls: bool = True,
    graph_neighbors: int = 15,
    kbet_neighbors: int = 50,
    lisi_neighbors: int = 90,
    resolutions: Sequence[float] = DEFAULT_RESOLUTIONS,
    leiden_seed: int = 42,
    classifier_seed: int = 42,
    map_distance: str = "cosine",
    null_size: int = 10_000,
    threshold: float = 0.05,
    n_jobs: int = 1,
    progress: bool = True,
    key_added: str = "cpe_benchmark",
) -> pd.DataFrame:
    """Score embeddings with the batch-correction and biology metrics of CellPainTR and the JUMP benchmark.

    One row per embedding, with the columns of the CellPainTR paper's Table 1 (``graph_connectivity``,
    ``silhouette_batch``, ``batch_classifier_control``, ``batch_classifier_no_control``, ``leiden_nmi``,
    ``leiden_ari``, ``silhouette_label``, ``map_control``, ``map_no_rep``, ``bio_info_control``,
    ``bio_info_no_control``, then ``batch_score``, ``bio_score``, ``overall_score``; :data:`CELLPAINTR_SCORES`)
    and the extras of the JUMP benchmark (Arevalo et al. 2024: ``kbet``, ``ilisi``, ``clisi``,
    ``map_control_fraction_retrieved``, ``map_no_rep_fraction_retrieved`` and ``total_score``;
    :data:`JUMP_SCORES`). All metrics lie in [0, 1], higher is better (the Leiden ARI is clipped at 0, its chance
    level).

    Ties never favour an embedding: equidistant neighbours are drawn at random and tied similarities share one rank
    in mAP, so an embedding that collapses wells together scores at chance on the bio metrics (and as well mixed on
    the batch metrics); one that places every well at the same point gets a warning. A metric left undefined by the
    labels (the batch silhouette or kBET when no label spans two batches, a mAP when no scored well has both a
    replicate and a negative) is NaN, with a warning naming the cause.

    Which wells each metric sees:

    - graph connectivity, silhouettes, Leiden NMI/ARI, kBET and LISI: the non-control wells (``exclude_controls``,
      as Arevalo et al. drop DMSO before these metrics); the neighbour graph is computed once per embedding, at
      the largest k, and shared.
    - classifiers "control": all wells; for ``bio_info_control`` the controls form a class of their own
      (:data:`CONTROL_CLASS`). "no_control": the non-control wells.
    - mAP: all wells, as :func:`~cpembed.bm.map_control` and :func:`~cpembed.bm.map_no_rep` define.

    Parameters
    ----------
    adata
        Wells × features, with the annotations below in ``.obs``.
    embeddings
        ``.obsm`` keys to score; ``"X"`` scores ``adata.X``.
    batch_key
        ``.obs`` column with the batch (e.g. source or imaging batch) to be corrected.
    label_key
        ``.obs`` column with the biological label the bio metrics score (e.g. MoA or compound); it must be set for
        every non-control well.
    perturbation_key
        ``.obs`` column identifying replicates for mAP (e.g. compound).
    plate_key
        ``.obs`` column with the plate (mAP negatives come from the query's plate).
    control_key
        Boolean ``.obs`` column, ``True`` for negative-control wells.
    well_key
        ``.obs`` column with the well position; passed to the control mAP so that replicates at the same position
        are not positives (``None``: no such restriction). The no-rep mAP has no such restriction, as in the JUMP
        benchmark (Arevalo et al. 2024), where only the control setting excludes same-position replicates.
    wells
        Boolean mask of the wells to score (every metric sees only these); ``None`` scores all. For models trained
        with labels, pass :attr:`LeakFreeSplit.scored <cpembed.bm.LeakFreeSplit>` of
        :func:`~cpembed.bm.leak_free_split` (with ``exclude_controls=False``), so no scored label was seen in
        training.
    metrics
        Metric columns to compute (names from :data:`METRIC_COLUMNS`); ``None`` computes all. Columns not computed
        are NaN, and so are the aggregates that need them.
    metric
        Distance of neighbours and silhouettes: ``"euclidean"`` (scib-metrics) or ``"cosine"`` (Arevalo et al.).
    neighbors
        ``"exact"``: exact neighbour search and silhouettes over all pairs of wells, ``O(n²)``. ``"approximate"``:
        pynndescent's neighbours (as scib-metrics) and silhouettes averaged over 30,000 wells drawn at random
        (seeded; within 0.0094 of the exact score with 99 % probability); on simulated JUMP-like data every
        aggregate score stays within 0.01 of the exact one (figures on the benchmarks page). ``"auto"``:
        approximate above 100,000 wells seen by the graph metrics, exact up to it.
    exclude_controls
        Leave negative controls out of the graph and silhouette metrics (Arevalo et al. 2024).
    graph_neighbors
        k of graph connectivity and Leiden (15, scib-metrics' ``Benchmarker``; Arevalo et al. use 25).
    kbet_neighbors
        k of the graph kBET starts from (50, scib-metrics' ``Benchmarker``).
    lisi_neighbors
        k of iLISI and cLISI (90, scib-metrics' ``Benchmarker``).
    resolutions
        Leiden resolutions searched for the best NMI (0.2 to 2.0, scib-metrics).
    leiden_seed
        Seed of the Leiden clusterings (42, scib-metrics).
    classifier_seed
        Seed of the 80/20 split and the random forests (42, CellPainTR reference code).
    map_distance
        Similarity of mAP rankings (``"cosine"``, Arevalo et al. 2024).
    null_size
        Random rankings of the mAP null distributions (10,000, Arevalo et al. 2024).
    threshold
        Corrected p-value below which a perturbation counts as retrieved (0.05, Arevalo et al. 2024).
    n_jobs
        Parallel workers for the random forests, the Leiden resolutions and the approximate neighbour search; results
        do not depend on it, but for the approximate neighbours (NN-descent's parallel updates), where it is recorded.
    progress
        Show a progress bar over embeddings × metrics.
    key_added
        ``adata.uns`` key the table and its settings are written to.

    Returns
    -------
    The table (index: embedding keys; columns: :data:`METRIC_COLUMNS` then :data:`SCORE_COLUMNS`). It is also
    written, with the settings that made it, to ``adata.uns[key_added]``: ``{"params": {...}, "results": table}``,
    ``params`` holding the ``.obs`` keys, the settings above but ``progress`` (the metric, the neighbour search
    used, the seeds, the mAP null size and threshold, ...; ``n_jobs`` only with approximate neighbours, whose result
    depends on it) and ``n_wells``, the wells scored. Nothing else of ``adata`` changes.
    """
    embeddings = [embeddings] if isinstance(embeddings, str) else list(embeddings)
    if not embeddings:
        raise ValueError("Pass at least one embedding: an .obsm key, or 'X' for adata.X.")
    steps = _selected_steps(metrics)
    check_obsm_keys(adata, *embeddings)
    scored = adata if wells is None else adata[_wells_mask(wells, adata.n_obs)]
    annotations = _read_wells(scored, batch_key, label_key, perturbation_key, plate_key, control_key, well_key)
    settings = BenchmarkSettings(
        metric=metric,
        neighbors=neighbors,
        graph_neighbors=graph_neighbors,
        kbet_neighbors=kbet_neighbors,
        lisi_neighbors=lisi_neighbors,
        resolutions=tuple(resolutions),
        leiden_seed=leiden_seed,
        classifier_seed=classifier_seed,
        map_distance=map_distance,
        null_size=null_size,
        threshold=threshold,
        n_jobs=n_jobs,
    )
    benchmark_keys = {
        "batch_key": batch_key,
        "label_key": label_key,
        "perturbation_key": perturbation_key,
        "plate_key": plate_key,
        "control_key": control_key,
        "well_key": well_key,
    }
    kept = ~annotations.is_control if exclude_controls else np.ones(scored.n_obs, dtype=bool)
    n_neighbors = _searched_neighbors(steps, settings, int(kept.sum()))
    # Recorded as the search used ("auto" resolved by the wells' number); an unknown value fails before any metric.
    settings = replace(settings, neighbors=resolve_search(neighbors, int(kept.sum())))
    matrices = {}
    for key in embeddings:  # a loop, not a comprehension, so that warnings point at the caller
        matrices[key] = _embedding_matrix(scored, key)
    rows = {}
    with tqdm(total=len(embeddings) * len(steps), desc="Benchmark", disable=not progress) as bar:
        for key, X in matrices.items():
            scorer = _EmbeddingScores(X, annotations, settings, kept, n_neighbors)
            rows[key] = {}
            for step in steps:
                bar.set_postfix_str(f"{key}: {step}")
                rows[key].update(_run_step(scorer, step))
                bar.update()
    table = pd.DataFrame.from_dict(rows, orient="index").reindex(columns=list(METRIC_COLUMNS)).astype(np.float64)
    _warn_undefined(table, steps, benchmark_keys)
    table = pd.concat([table, CELLPAINTR_SCORES.score(table), JUMP_SCORES.score(table)], axis=1)
    table.index.name = "embedding"
    adata.uns[key_added] = benchmark_record(table, settings, benchmark_keys, exclude_controls, int(scored.n_obs))
    logger.info("added the benchmark table and its settings in adata.uns[%r]", key_added)
    return table


def benchmark_record(
    table: pd.DataFrame, settings: BenchmarkSettings, keys: dict[str, str | None], exclude_controls: bool, n_wells: int
) -> dict:
    """What :func:`benchmark` stores in ``.uns``: ``{"params": <keys and settings>, "results": table}``.

    ``params`` holds the ``.obs`` keys, every setting that changes a score (``n_jobs`` only does with approximate
    neighbours) and ``n_wells``, the wells scored; ``None`` values are left out and tuples become arrays, so the
    record can be written to ``.h5ad``.
    """
    params = {**keys, **asdict(settings), "exclude_controls": exclude_controls, "n_wells": n_wells}
    if settings.neighbors == "exact":  # pynndescent's approximate neighbours depend on its number of threads
        params.pop("n_jobs")
    params = {name: np.asarray(value) if isinstance(value, tuple) else value for name, value in params.items()}
    return {"params": {name: value for name, value in params.items() if value is not None}, "results": table}


def _wells_mask(wells: np.ndarray, n_obs: int) -> np.ndarray:
    """``wells`` as a boolean mask over the ``n_obs`` wells, or a ValueError saying what is wrong with it."""
    mask = np.asarray(wells)
    if mask.dtype != bool or mask.shape != (n_obs,):
        raise ValueError(f"wells must be a boolean mask of length {n_obs}, got dtype {mask.dtype}, shape {mask.shape}.")
    if not mask.any():
        raise ValueError("wells selects no well: nothing to score.")
    return mask


def check_enough_wells(n_wells: int, metrics: Sequence[str] | None = None) -> None:
    """Raise a ValueError when :func:`benchmark`, with its default neighbours, would see too few wells.

    For callers that check their input before long work; ``n_wells`` counts the wells the graph metrics see (the
    non-control wells with ``exclude_controls=True``).
    """
    defaults = inspect.signature(benchmark).parameters
    settings = SimpleNamespace(**{name: defaults[name].default for name in set(_NEIGHBOR_SETTINGS.values())})
    _searched_neighbors(_selected_steps(metrics), settings, n_wells)


def _searched_neighbors(steps: list[str], settings: BenchmarkSettings, n_wells: int) -> int:
    """The largest k the selected graph steps need (0 without any), or a ValueError if the wells are too few."""
    names = [_NEIGHBOR_SETTINGS[step] for step in steps if step in _NEIGHBOR_SETTINGS]
    needed = {name: getattr(settings, name) for name in names}
    too_many = {name: k for name, k in needed.items() if k > n_wells}
    if too_many:
        shown = ", ".join(f"{name}={k}" for name, k in too_many.items())
        raise ValueError(
            f"The graph metrics see {n_wells} wells, fewer than the neighbours asked for ({shown}; the well itself "
            "counts as one). Lower those settings, score more wells, or leave the graph metrics out with `metrics=`."
        )
    return max(needed.values(), default=0)


def _warn_undefined(table: pd.DataFrame, steps: list[str], keys: dict[str, str | None]) -> None:
    """Warn, with the cause, about each computed metric that came out NaN (the aggregates using it are NaN too)."""
    computed = {column for step in steps for column in _STEPS[step]}
    for column, cause in _NAN_CAUSES.items():
        undefined = list(table.index[table[column].isna()]) if column in computed else []
        if undefined:
            warnings.warn(
                f"{column} is NaN for {', '.join(map(repr, undefined))}, and so are the scores that average it: "
                f"{cause.format(**keys)}.",
                UserWarning,
                stacklevel=3,
            )


def _run_step(scorer: _EmbeddingScores, step: str) -> dict[str, float]:
    compute: Callable[[], dict[str, float]] = getattr(scorer, step)
    return compute()


def _selected_steps(metrics: Sequence[str] | None) -> list[str]:
    """The steps that fill the requested metric columns."""
    if metrics is None:
        return list(_STEPS)
    unknown = sorted(set(metrics) - set(METRIC_COLUMNS))
    if unknown:
        raise ValueError(f"Unknown metrics {unknown}. Choose from: {', '.join(METRIC_COLUMNS)}.")
    return [step for step, columns in _STEPS.items() if set(columns) & set(metrics)]


def _read_wells(
    adata: AnnData,
    batch_key: str,
    label_key: str,
    perturbation_key: str,
    plate_key: str,
    control_key: str,
    well_key: str | None,
) -> _Wells:
    """Read and check the annotations: present, a boolean control flag, two batches, labels on treated wells."""
    check_obs_keys(adata, batch_key, label_key, perturbation_key, plate_key, control_key, well_key)
    obs = adata.obs
    is_control = control_flags(adata, control_key)
    if is_control.all():
        raise ValueError(f"Every well is flagged as a control in adata.obs[{control_key!r}]: nothing to score.")
    check_obs_complete(adata, batch_key, perturbation_key, plate_key, well_key)
    n_batches = obs[batch_key].nunique()
    if n_batches < 2:
        raise ValueError(
            f"adata.obs[{batch_key!r}] holds a single batch: batch-correction metrics need at least two batches."
        )
    missing_labels = obs[label_key].isna().to_numpy() & ~is_control
    if missing_labels.any():
        raise ValueError(
            f"adata.obs[{label_key!r}] is missing for {int(missing_labels.sum())} non-control wells; "
            "subset adata to labelled wells first."
        )
    if not obs[label_key][~is_control].duplicated().any():
        raise ValueError(
            f"Every non-control well has a label of its own in adata.obs[{label_key!r}]: the bio and batch metrics "
            "compare wells that share a label. Pass a label shared by several wells, such as the MoA or compound."
        )
    return _Wells(
        batch=obs[batch_key].astype(str).to_numpy(),
        label=np.where(is_control & obs[label_key].isna().to_numpy(), CONTROL_CLASS, obs[label_key].astype(object)),
        perturbation=obs[perturbation_key].astype(str).to_numpy(),
        plate=obs[plate_key].astype(str).to_numpy(),
        is_control=is_control,
        well=None if well_key is None else obs[well_key].astype(str).to_numpy(),
    )


def _embedding_matrix(adata: AnnData, key: str) -> np.ndarray:
    """The embedding as a finite 2-D float array; a warning when it places every well at one point."""
    X = get_finite_matrix(adata, obsm_key=key)
    where = matrix_name(obsm_key=key)
    if X.ndim != 2:
        raise ValueError(f"{where} must be a 2-D wells × dimensions array, got shape {X.shape}.")
    X = np.asarray(X, dtype=np.float64)
    if (X[0] == X).all():
        warnings.warn(
            f"{where} places every scored well at the same point: it carries no information. Its neighbours are "
            "drawn at random among ties, its bio metrics score at chance and its batch metrics as perfectly mixed.",
            UserWarning,
            stacklevel=3,
        )
    return X
