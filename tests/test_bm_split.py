"""cpe.bm.leak_free_split and benchmark(wells=...): the leak-free protocol, on real BBBC021 annotations."""

import numpy as np
import pandas as pd
import pytest

from cpembed import bm

KEYS = {
    "batch_key": "Metadata_Batch",
    "label_key": "Metadata_moa",
    "perturbation_key": "Metadata_Compound",
    "plate_key": "Metadata_Plate",
    "control_key": "Metadata_is_negcon",
}


def test_no_scored_perturbation_keeps_its_training_label(bbbc021_standardized):
    split = bm.leak_free_split(
        bbbc021_standardized, "Metadata_Compound", "Metadata_is_negcon", stratify_key="Metadata_moa"
    )
    obs = bbbc021_standardized.obs
    compound = obs["Metadata_Compound"].astype(str).to_numpy()
    control = obs["Metadata_is_negcon"].to_numpy()
    labels = np.asarray(split.train_labels, dtype=str)
    heldout = np.isin(compound, split.heldout)
    assert (labels[heldout] == "unlabeled").all()
    np.testing.assert_array_equal(labels[~heldout], compound[~heldout])  # training compounds and DMSO keep theirs
    np.testing.assert_array_equal(split.scored, heldout | control)
    assert not set(labels[split.scored & ~control]) - {"unlabeled"}
    assert not control[heldout].any()


def test_every_moa_with_several_compounds_keeps_both_kinds(bbbc021_standardized):
    split = bm.leak_free_split(
        bbbc021_standardized,
        "Metadata_Compound",
        "Metadata_is_negcon",
        stratify_key="Metadata_moa",
        fraction=0.5,
        seed=3,
    )
    treated = bbbc021_standardized.obs[~bbbc021_standardized.obs["Metadata_is_negcon"]]
    per_moa = treated.groupby("Metadata_moa", observed=True)["Metadata_Compound"].unique()
    for compounds in per_moa:
        if len(compounds) > 1:
            held = np.isin(compounds.astype(str), split.heldout)
            assert held.any()
            assert not held.all()


def test_split_depends_on_the_seed_only(bbbc021_standardized):
    first, again, other = (
        bm.leak_free_split(bbbc021_standardized, "Metadata_Compound", "Metadata_is_negcon", seed=seed)
        for seed in (0, 0, 1)
    )
    assert first.heldout == again.heldout
    assert first.heldout != other.heldout
    assert 0.2 < len(first.heldout) / 38 < 0.45  # about a third of BBBC021's 38 compounds


def test_benchmark_on_wells_equals_benchmark_of_the_subset(bbbc021_standardized):
    split = bm.leak_free_split(
        bbbc021_standardized, "Metadata_Compound", "Metadata_is_negcon", stratify_key="Metadata_moa"
    )
    metrics = ["graph_connectivity", "silhouette_batch", "silhouette_label", "map_control"]
    options = {**KEYS, "metrics": metrics, "exclude_controls": False, "null_size": 500, "progress": False}
    adata = bbbc021_standardized.copy()
    on_wells = bm.benchmark(adata, "X_pca", wells=split.scored, **options)
    subset = bm.benchmark(bbbc021_standardized[split.scored].copy(), "X_pca", **options)
    pd.testing.assert_frame_equal(on_wells, subset)
    assert on_wells[metrics].notna().all().all()
    assert list(adata.obs.columns) == list(bbbc021_standardized.obs.columns)


def test_bad_split_and_mask_get_clear_errors(bbbc021_standardized):
    with pytest.raises(ValueError, match="fraction"):
        bm.leak_free_split(bbbc021_standardized, "Metadata_Compound", "Metadata_is_negcon", fraction=1.0)
    with pytest.raises(ValueError, match="unlabeled_category"):
        bm.leak_free_split(bbbc021_standardized, "Metadata_Compound", "Metadata_is_negcon", unlabeled_category="DMSO")
    with pytest.raises(KeyError, match="Metadata_nope"):
        bm.leak_free_split(
            bbbc021_standardized, "Metadata_Compound", "Metadata_is_negcon", stratify_key="Metadata_nope"
        )
    with pytest.raises(ValueError, match="boolean mask"):
        bm.benchmark(bbbc021_standardized, "X_pca", wells=np.arange(10), **KEYS, progress=False)
    with pytest.raises(ValueError, match="no well"):
        bm.benchmark(
            bbbc021_standardized,
            "X_pca",
            wells=np.zeros(bbbc021_standardized.n_obs, dtype=bool),
            **KEYS,
            progress=False,
        )
