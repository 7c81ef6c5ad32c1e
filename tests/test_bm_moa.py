"""BBBC021 MoA 1-NN accuracy (NSC / NSCB) against a brute-force loop, and its value on real data."""

from functools import cache

import numpy as np
import pandas as pd
import pytest

import cpembed as cpe
from cpembed.bm import moa_accuracy


@cache
def _bbbc021():
    """BBBC021 standardised to each plate's DMSO wells (the classic per-plate normalisation)."""
    adata = cpe.datasets.bbbc021()
    cpe.pp.normalize_to_controls(adata, "Metadata_Plate", "Metadata_is_negcon", method="standardize")
    obs = adata.obs
    return {
        "X": adata.X,
        "compound": obs["Metadata_Compound"].astype(str).to_numpy(),
        "concentration": obs["Metadata_Concentration"].to_numpy(),
        "moa": obs["Metadata_moa"].astype(str).to_numpy(),
        "batch": obs["Metadata_Batch"].astype(str).to_numpy(),
        "is_control": obs["Metadata_is_negcon"].to_numpy(),
    }


@cache
def _simulated():
    """12 compounds x 2 concentrations x 3 wells, 3 MoAs, 4 batches with a shift; each treatment spans 2 batches."""
    rng = np.random.default_rng(5)
    rows = []
    for c in range(12):
        for concentration in (1.0, 10.0):
            for replicate in range(3):
                batch = f"b{(c + 2 * (replicate // 2)) % 4}"
                rows.append((f"c{c}", concentration, f"m{c % 3}", batch))
    rows += [("DMSO", 0.0, "DMSO", f"b{b}") for b in range(4) for _ in range(4)]
    table = pd.DataFrame(rows, columns=["compound", "concentration", "moa", "batch"])
    moa_effect = rng.normal(size=(4, 10))
    batch_effect = rng.normal(scale=1.5, size=(4, 10))
    X = (
        moa_effect[pd.factorize(table["moa"])[0]]
        + batch_effect[table["batch"].str[1].astype(int)]
        + rng.normal(scale=2.5, size=(len(table), 10))
    )
    return {"X": X, **{k: table[k].to_numpy() for k in table}, "is_control": (table["compound"] == "DMSO").to_numpy()}


def _brute_force(data, aggregate):
    """Loop over treatments; a query is scored when some eligible treatment shares its MoA."""
    profiles, info = {}, {}
    for i in np.flatnonzero(~data["is_control"]):
        key = (data["compound"][i], data["concentration"][i])
        profiles.setdefault(key, []).append(np.asarray(data["X"][i], dtype=np.float64))
        moa, batches = info.get(key, (data["moa"][i], set()))
        info[key] = (moa, batches | {data["batch"][i]})
    profiles = {key: getattr(np, aggregate)(rows, axis=0) for key, rows in profiles.items()}

    def cosine(a, b):
        return a @ b / (np.linalg.norm(a) * np.linalg.norm(b))

    accuracies = {}
    for name, needs_other_batch in [("nsc", False), ("nscb", True)]:
        hits = []
        for query, (moa, batches) in info.items():
            candidates = [
                key
                for key, (_, other_batches) in info.items()
                if key[0] != query[0] and not (needs_other_batch and batches & other_batches)
            ]
            if not any(info[key][0] == moa for key in candidates):
                continue
            best = max(candidates, key=lambda key, q=query: cosine(profiles[q], profiles[key]))
            hits.append(info[best][0] == moa)
        accuracies[name] = (np.mean(hits), len(hits))
    return accuracies


def _ours(data, aggregate="mean"):
    return moa_accuracy(
        data["X"],
        data["compound"],
        data["concentration"],
        moa=data["moa"],
        batch=data["batch"],
        is_control=data["is_control"],
        aggregate=aggregate,
    )


@pytest.mark.parametrize("source", [_bbbc021, _simulated], ids=["bbbc021", "simulated"])
@pytest.mark.parametrize("aggregate", ["mean", "median"])
def test_nsc_nscb_equal_brute_force(source, aggregate):
    data = source()
    result = _ours(data, aggregate)
    expected = _brute_force(data, aggregate)
    assert result.nsc == pytest.approx(expected["nsc"][0], abs=1e-12)
    assert result.nscb == pytest.approx(expected["nscb"][0], abs=1e-12)
    assert result.per_treatment["nsc_correct"].notna().sum() == expected["nsc"][1]
    assert result.per_treatment["nscb_correct"].notna().sum() == expected["nscb"][1]


def test_bbbc021_accuracy_in_the_published_range():
    """Ljosa et al. (2013) report NSC of roughly 0.8-0.95 for CellProfiler mean profiles."""
    result = _ours(_bbbc021())
    table = result.per_treatment
    print(f"BBBC021 standardised per plate: NSC {result.nsc:.3f}, NSCB {result.nscb:.3f}")
    assert len(table) == 103  # the 103 annotated treatments of Ljosa et al. (2013)
    assert table["nsc_correct"].notna().sum() == 103
    # NSCB leaves out cholesterol-lowering and kinase inhibitors, each imaged in one week (Ando et al. 2017).
    left_out = set(table.loc[table["nscb_correct"].isna(), "moa"])
    assert left_out == {"Cholesterol-lowering", "Kinase inhibitors"}
    assert 0.75 <= result.nsc <= 0.97
    assert result.nscb < result.nsc


def test_moa_bad_input():
    data = _simulated()
    with pytest.raises(ValueError, match="aggregate"):
        _ours(data, aggregate="max")
    mixed = dict(data, moa=data["moa"].copy())
    mixed["moa"][0] = "m2"
    with pytest.raises(ValueError, match="different MoAs"):
        _ours(mixed)
    nan = dict(data, X=data["X"].copy())
    nan["X"][1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        _ours(nan)
    with pytest.raises(ValueError, match="batch has shape"):
        _ours(dict(data, batch=data["batch"][:-1]))
