"""mAP (control / no rep) against copairs 0.5.5, a brute-force null and statsmodels, on real and simulated data."""

import itertools
from functools import cache

import numpy as np
import pandas as pd
import pytest

import cpembed as cpe
from cpembed.bm import (
    UndefinedMAPError,
    average_precision,
    benjamini_hochberg,
    map_control,
    map_no_rep,
    null_average_precision,
)


def _copairs(module="map"):
    """copairs, the reference implementation (a test dependency): tests that compare with it skip without it."""
    return pytest.importorskip(f"copairs.{module}")


NULL_SIZE = 10_000


@cache
def _bbbc021():
    """BBBC021 standardised to each plate's DMSO wells; a perturbation is a compound at one concentration."""
    adata = cpe.datasets.bbbc021()
    cpe.pp.normalize_to_controls(adata, "Metadata_Plate", "Metadata_is_negcon", method="standardize")
    obs = adata.obs
    perturbation = obs["Metadata_Compound"].astype(str) + "@" + obs["Metadata_Concentration"].astype(str)
    return _dataset(adata.X, perturbation, obs["Metadata_Plate"], obs["Metadata_Well"], obs["Metadata_is_negcon"])


@cache
def _lincs():
    adata = cpe.datasets.lincs_plate()
    obs = adata.obs
    return _dataset(
        adata.X, obs["Metadata_broad_sample"], obs["Metadata_Plate"], obs["Metadata_Well"], obs["Metadata_is_negcon"]
    )


@cache
def _simulated():
    """Six plates of 40 wells (8 controls each); 48 perturbations with 3 to 5 wells spread over the plates."""
    rng = np.random.default_rng(7)
    n_plates, controls_per_plate, treated_per_plate = 6, 8, 32
    sizes = rng.integers(3, 6, size=60)
    labels = np.repeat([f"p{i}" for i in range(sizes.size)], sizes)[: n_plates * treated_per_plate]
    plate = np.concatenate(
        [np.arange(labels.size) % n_plates, np.repeat(np.arange(n_plates), controls_per_plate)]
    ).astype(str)
    perturbation = np.concatenate([labels, np.full(n_plates * controls_per_plate, "DMSO")])
    codes = pd.factorize(perturbation)[0]
    effects = rng.normal(size=(codes.max() + 1, 16)) * rng.uniform(0, 1, size=(codes.max() + 1, 1))
    X = effects[codes] + rng.normal(size=(codes.size, 16))
    well = np.array([f"w{i % 40}" for i in range(codes.size)])
    return _dataset(X, perturbation, plate, well, perturbation == "DMSO")


def _dataset(X, perturbation, plate, well, is_control):
    return {
        "X": np.asarray(X, dtype=np.float64),
        "perturbation": np.asarray(perturbation, dtype=str),
        "plate": np.asarray(plate, dtype=str),
        "well": np.asarray(well, dtype=str),
        "is_control": np.asarray(is_control, dtype=bool),
    }


DATASETS = {"bbbc021": _bbbc021, "lincs": _lincs, "simulated": _simulated}


def _copairs_ap(data, *, control: bool, use_well: bool):
    """Per-query AP from copairs with the pair rules of Arevalo et al. (2024), metrics/map.py."""
    meta = pd.DataFrame({k: data[k] for k in ("perturbation", "plate", "well", "is_control")})
    X = data["X"]
    if control:
        meta.loc[meta["is_control"], "perturbation"] = [f"control_{i}" for i in range(int(meta["is_control"].sum()))]
        rules = {
            "pos_diffby": ["well"] if use_well else [],
            "neg_sameby": ["plate"],
            "neg_diffby": ["is_control", "perturbation"],
        }
    else:
        counts = meta["perturbation"].map(meta["perturbation"].value_counts())
        keep = (~meta["is_control"] & (counts > 1)).to_numpy()
        meta, X = meta[keep], X[keep]
        rules = {"pos_diffby": ["well"] if use_well else [], "neg_sameby": ["plate"], "neg_diffby": ["perturbation"]}
    scores = _copairs().average_precision(meta, X, pos_sameby=["perturbation"], progress_bar=False, **rules)
    scores.index = meta.index
    return scores[
        ~scores["is_control"] & (scores["n_pos_pairs"] > 0) & (scores["n_total_pairs"] > scores["n_pos_pairs"])
    ]


def _our_ap(data, *, control: bool, use_well: bool):
    well = data["well"] if use_well else None
    if control:
        mask = data["is_control"]
        return average_precision(data["X"], ~mask, data["perturbation"], data["plate"], mask, positive_diff=well)
    keep = ~data["is_control"] & (
        pd.Series(data["perturbation"]).map(pd.Series(data["perturbation"]).value_counts()) > 1
    )
    rows = np.flatnonzero(keep)
    subset = {k: v[rows] for k, v in data.items()}
    everything = np.ones(rows.size, dtype=bool)
    scores = average_precision(
        subset["X"],
        everything,
        subset["perturbation"],
        subset["plate"],
        everything,
        positive_diff=None if well is None else well[rows],
    )
    scores.index = rows[scores.index]
    return scores


@pytest.mark.parametrize("name", DATASETS)
@pytest.mark.parametrize("control", [True, False], ids=["control", "no_rep"])
@pytest.mark.parametrize("use_well", [False, True], ids=["any_well", "other_well"])
def test_average_precision_equals_copairs(name, control, use_well):
    data = DATASETS[name]()
    ours = _our_ap(data, control=control, use_well=use_well)
    if name == "bbbc021" and use_well:
        # Every BBBC021 replicate sits at the same well position on its plate: no pair differs in well.
        assert ours.empty
        with pytest.raises(_copairs("matching").UnpairedException):
            _copairs_ap(data, control=control, use_well=use_well)
        return
    expected = _copairs_ap(data, control=control, use_well=use_well)
    assert len(ours) > 20
    np.testing.assert_array_equal(ours.index, expected.index)
    np.testing.assert_allclose(ours["average_precision"], expected["average_precision"], atol=1e-6, rtol=0)
    np.testing.assert_array_equal(ours["n_positives"], expected["n_pos_pairs"])
    np.testing.assert_array_equal(ours["n_total"], expected["n_total_pairs"])


def test_correlation_distance_equals_copairs():
    data = _lincs()
    mask = data["is_control"]
    ours = average_precision(data["X"], ~mask, data["perturbation"], data["plate"], mask, distance="correlation")
    meta = pd.DataFrame({k: data[k] for k in ("perturbation", "plate", "is_control")})
    meta.loc[mask, "perturbation"] = [f"control_{i}" for i in range(int(mask.sum()))]
    expected = (
        _copairs()
        .average_precision(
            meta,
            data["X"],
            pos_sameby=["perturbation"],
            pos_diffby=[],
            neg_sameby=["plate"],
            neg_diffby=["is_control", "perturbation"],
            distance="correlation",
            progress_bar=False,
        )
        .dropna(subset=["average_precision"])
    )
    expected = expected[~expected["is_control"]]
    np.testing.assert_allclose(ours["average_precision"], expected["average_precision"], atol=1e-6, rtol=0)


def test_tied_similarities_do_not_favour_positives():
    """Ties share one threshold, as in scikit-learn: checked against average_precision_score query by query."""
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(3)
    # Few distinct directions, so that positives and negatives tie with each other and among themselves.
    X = np.eye(4)[rng.integers(0, 4, size=60)] + np.eye(4)[rng.integers(0, 4, size=60)]
    perturbation = np.array([f"p{i}" for i in rng.integers(0, 6, size=60)])
    is_control = np.arange(60) >= 45
    perturbation[is_control] = "DMSO"
    scores = average_precision(X, ~is_control, perturbation, np.zeros(60), is_control)
    unit = X / np.linalg.norm(X, axis=1, keepdims=True)
    for query, ap in scores["average_precision"].items():
        candidates = (perturbation == perturbation[query]) | is_control
        candidates[query] = False
        expected = average_precision_score(
            perturbation[candidates] == perturbation[query], unit[candidates] @ unit[query]
        )
        assert ap == pytest.approx(expected, abs=1e-12)
    assert len(scores) > 30


def test_constant_embedding_scores_at_chance():
    """Every similarity tied: AP is the share of positives, no perturbation is retrieved."""
    data = {**_simulated(), "X": np.ones_like(_simulated()["X"])}
    queries = _our_ap(data, control=True, use_well=False)
    np.testing.assert_allclose(queries["average_precision"], queries["n_positives"] / queries["n_total"], rtol=1e-12)
    result = map_control(data["X"], data["perturbation"], data["plate"], data["is_control"], null_size=1000)
    assert result.mean_average_precision < 0.5
    assert result.fraction_retrieved == 0.0


def _copairs_map(data, *, control: bool, tmp_path):
    scores = _copairs_ap(data, control=control, use_well=False)
    scores = scores.assign(perturbation=data["perturbation"][scores.index])
    return (
        _copairs()
        .mean_average_precision(
            scores,
            ["perturbation"],
            null_size=NULL_SIZE,
            threshold=0.05,
            seed=0,
            progress_bar=False,
            cache_dir=tmp_path,
        )
        .set_index("perturbation")
    )


def _brute_force_null_maps(data, *, control: bool, null_size: int, seed: int) -> dict:
    """copairs' construction: null mAP number s averages null AP number s of each query's configuration."""
    scores = _our_ap(data, control=control, use_well=False)
    scores["perturbation"] = data["perturbation"][scores.index]
    null_maps = {}
    for label, group in scores.groupby("perturbation"):
        nulls = [
            null_average_precision(k, n, null_size, seed)
            for k, n in zip(group["n_positives"], group["n_total"], strict=True)
        ]
        null_maps[label] = (group["average_precision"].mean(), np.mean(nulls, axis=0))
    return null_maps


@pytest.mark.parametrize("name", ["bbbc021", "lincs"])
@pytest.mark.parametrize("control", [True, False], ids=["control", "no_rep"])
def test_map_and_p_values_agree_with_copairs(name, control, tmp_path):
    """mAP exactly; p-values within Monte-Carlo error (both nulls are random, with different generators).

    A null mAP equal to the observed one does not count against it (copairs' ``null > score``). copairs compares
    float32 nulls with float64 scores, so there such an exact tie (common when a perturbation has few wells) falls
    either way.
    """
    data = DATASETS[name]()
    function = map_control if control else map_no_rep
    ours = function(data["X"], data["perturbation"], data["plate"], data["is_control"], null_size=NULL_SIZE)
    theirs = _copairs_map(data, control=control, tmp_path=tmp_path).loc[ours.per_perturbation.index]
    table = ours.per_perturbation
    np.testing.assert_allclose(table["mean_average_precision"], theirs["mean_average_precision"], atol=1e-6)
    assert ours.mean_average_precision == pytest.approx(theirs["mean_average_precision"].mean(), abs=1e-6)

    # Our p counts null mAPs above the observed one; with ties counted too it would be p_with_ties. copairs' p
    # must lie in [p, p_with_ties] up to Monte-Carlo error.
    null_maps = _brute_force_null_maps(data, control=control, null_size=NULL_SIZE, seed=0)
    p_with_ties = np.array(
        [(1 + np.sum(null_maps[label][1] >= null_maps[label][0] - 1e-12)) / (NULL_SIZE + 1) for label in table.index]
    )
    p = theirs["p_value"].to_numpy()
    tolerance = 5 * np.sqrt(2 * p * (1 - p) / NULL_SIZE) + 3 / NULL_SIZE
    assert (p >= table["p_value"] - tolerance).all()
    assert (p <= p_with_ties + tolerance).all()
    # Perturbations called differently must lie near the threshold in copairs' own corrected p-values.
    disagree = table["retrieved"].to_numpy() != theirs["below_corrected_p"].to_numpy()
    assert ((theirs["corrected_p_value"][disagree] > 0.025) & (theirs["corrected_p_value"][disagree] < 0.1)).all()
    assert abs(ours.fraction_retrieved - theirs["below_corrected_p"].mean()) <= disagree.mean() + 1e-12


def test_p_values_follow_the_copairs_null_construction():
    """Brute force: p = (1 + #{null mAP > observed}) / (1 + null size), BH-corrected."""
    data = _lincs()
    result = map_control(data["X"], data["perturbation"], data["plate"], data["is_control"], null_size=2000, seed=3)
    for label, (observed, null_map) in _brute_force_null_maps(data, control=True, null_size=2000, seed=3).items():
        expected = (1 + np.sum(null_map > observed + 1e-12)) / 2001
        assert result.per_perturbation.loc[label, "p_value"] == pytest.approx(expected, abs=1e-12)
    np.testing.assert_allclose(
        result.per_perturbation["corrected_p_value"], benjamini_hochberg(result.per_perturbation["p_value"])
    )


def _exact_ap_distribution(k, n):
    """Every placement of k positives among n ranks, equally likely."""
    values = []
    for positions in itertools.combinations(range(n), k):
        values.append(np.mean([(r + 1) / (p + 1) for r, p in enumerate(positions)]))
    return np.array(values)


@pytest.mark.parametrize(("k", "n"), [(1, 4), (2, 6), (3, 8), (5, 6), (6, 9)])
def test_null_matches_enumeration(k, n):
    """Both samplers (Floyd for small k, partial sort otherwise) against the exact distribution."""
    null = null_average_precision(k, n, 20_000, 0)
    exact = np.sort(_exact_ap_distribution(k, n))
    grid = np.unique(exact)
    exact_cdf = np.searchsorted(exact, grid, side="right") / exact.size
    null_cdf = np.searchsorted(np.sort(null), grid + 1e-12, side="right") / null.size
    assert np.abs(exact_cdf - null_cdf).max() < 0.015
    assert null.mean() == pytest.approx(exact.mean(), abs=0.005)


def test_null_is_seeded_cached_and_read_only():
    first = null_average_precision(3, 30, 1000, 0)
    assert null_average_precision(3, 30, 1000, 0) is first
    assert not first.flags.writeable
    assert not np.array_equal(first, null_average_precision(3, 30, 1000, 1))
    np.testing.assert_array_equal(null_average_precision(4, 4, 10, 0), 1.0)
    with pytest.raises(ValueError, match="n_positives"):
        null_average_precision(5, 4, 10, 0)


def test_benjamini_hochberg_equals_statsmodels():
    multipletests = pytest.importorskip("statsmodels.stats.multitest").multipletests
    rng = np.random.default_rng(0)
    p = np.concatenate([rng.uniform(size=200), rng.uniform(0, 0.01, size=50), [1.0, 1.0, 1e-4]])
    np.testing.assert_allclose(benjamini_hochberg(p), multipletests(p, method="fdr_bh")[1], rtol=1e-12)


def test_result_fields():
    data = _simulated()
    result = map_no_rep(data["X"], data["perturbation"], data["plate"], data["is_control"], null_size=500)
    table = result.per_perturbation
    assert list(table.columns) == ["mean_average_precision", "n_queries", "p_value", "corrected_p_value", "retrieved"]
    assert "DMSO" not in table.index
    assert result.mean_average_precision == pytest.approx(table["mean_average_precision"].mean())
    assert result.fraction_retrieved == pytest.approx((table["corrected_p_value"] < 0.05).mean())
    with pytest.raises(AttributeError):
        result.mean_average_precision = 0.0


def test_small_batches_give_the_same_scores():
    data = _simulated()
    args = (data["X"], ~data["is_control"], data["perturbation"], data["plate"], data["is_control"])
    pd.testing.assert_frame_equal(average_precision(*args, batch_size=7), average_precision(*args))


def test_plate_without_controls_is_an_error():
    data = _simulated()
    keep = ~(data["is_control"] & (data["plate"] == "2"))
    with pytest.raises(ValueError, match=r"1 plates have no control wells.*2"):
        map_control(data["X"][keep], data["perturbation"][keep], data["plate"][keep], data["is_control"][keep])


@pytest.mark.parametrize("function", [map_control, map_no_rep])
def test_bad_input_is_an_error(function):
    data = _simulated()
    X, perturbation, plate, is_control = data["X"].copy(), data["perturbation"], data["plate"], data["is_control"]
    X[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        function(X, perturbation, plate, is_control)
    with pytest.raises(ValueError, match="plate has shape"):
        function(data["X"], perturbation, plate[:-1], is_control)
    with pytest.raises(TypeError, match="is_control must be a boolean"):
        function(data["X"], perturbation, plate, is_control.astype(int))
    with pytest.raises(ValueError, match="distance must be"):
        function(data["X"], perturbation, plate, is_control, distance="manhattan")
    zero = data["X"].copy()
    zero[5] = 0
    with pytest.raises(ValueError, match="zero"):
        function(zero, perturbation, plate, is_control)


def test_control_label_shared_with_treatments_is_an_error():
    data = _simulated()
    is_control = data["is_control"] | (data["perturbation"] == "p0")
    perturbation = np.where(data["perturbation"] == "p1", "p0", data["perturbation"])
    with pytest.raises(ValueError, match="used by control and non-control"):
        map_control(data["X"], perturbation, data["plate"], is_control)


@pytest.mark.parametrize("scale", [2.0**600, 2.0**-600], ids=["huge", "tiny"])
def test_average_precision_is_unchanged_by_the_embedding_scale(scale):
    """Values whose squares leave float64's range still give the same cosine and correlation rankings."""
    data = _simulated()
    mask = data["is_control"]
    arrays = (data["perturbation"], data["plate"], mask)
    for distance in ("cosine", "correlation"):
        expected = average_precision(data["X"], ~mask, *arrays, distance=distance)
        scaled = average_precision(data["X"] * scale, ~mask, *arrays, distance=distance)
        pd.testing.assert_frame_equal(scaled, expected)


@pytest.mark.parametrize("function", [map_control, map_no_rep])
def test_no_scorable_query_is_an_undefined_map(function):
    """Singleton perturbations have no positive: there is nothing to score, which is not a bad input."""
    data = _simulated()
    singletons = np.where(data["is_control"], data["perturbation"], np.arange(data["is_control"].size).astype(str))
    with pytest.raises(UndefinedMAPError, match="undefined"):
        function(data["X"], singletons, data["plate"], data["is_control"])


def test_replicates_without_negatives_are_an_undefined_map_no_rep():
    """mAP (no rep) ranks replicates against other perturbations on the plate: with one perturbation there are none."""
    data = _simulated()
    keep = data["is_control"] | (data["perturbation"] == "p0")
    with pytest.raises(UndefinedMAPError, match="No query well has both a positive and a negative"):
        map_no_rep(data["X"][keep], data["perturbation"][keep], data["plate"][keep], data["is_control"][keep])
    defined = map_control(data["X"][keep], data["perturbation"][keep], data["plate"][keep], data["is_control"][keep])
    assert 0 < defined.mean_average_precision <= 1
