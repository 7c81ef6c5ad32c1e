"""cpe.tl.cellpaintr: what it writes, copy semantics, a given model, bad keys; on BBBC021."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import torch

import cpembed as cpe

TINY_MODEL = {"d_model": 8, "n_layers": 1, "d_mlp": 16, "filter_width": 8}
TINY_TRAIN = {
    "stage1": {"max_epochs": 1, "batch_size": 64},
    "stage2": {"max_epochs": 2, "batch_size": 32, "lr": 1e-3},
    "stage3": {"max_epochs": 1, "batch_size": 64, "lr": 1e-3},
    "accelerator": "cpu",
    "enable_progress_bar": False,
    "logger": False,
}
KEYS = {"batch_key": "Metadata_Batch", "labels_key": "Metadata_Compound"}


@pytest.fixture(scope="module")
def profiles() -> ad.AnnData:
    """Four weeks of BBBC021, normalised to each plate's DMSO wells and clipped, on 30 features (fast)."""
    adata = cpe.datasets.bbbc021()
    adata = adata[adata.obs["Metadata_Batch"].isin(["Week1", "Week2", "Week4", "Week5"])].copy()
    cpe.pp.drop_nonfinite(adata)
    cpe.pp.control_variation_filter(adata, "Metadata_Plate", "Metadata_is_negcon")
    cpe.pp.normalize_to_controls(adata, "Metadata_Plate", "Metadata_is_negcon")
    cpe.pp.clip_quantiles(adata)
    return adata[:, :30].copy()


@pytest.fixture(scope="module")
def embedded(profiles) -> ad.AnnData:
    torch.manual_seed(0)
    return cpe.tl.cellpaintr(profiles, **KEYS, model_kwargs=TINY_MODEL, stage_embeddings=True, copy=True, **TINY_TRAIN)


@pytest.mark.slow
def test_copy_returns_new_object_and_leaves_input_untouched(profiles, embedded):
    assert embedded is not profiles
    assert "X_cellpaintr" not in profiles.obsm
    assert "X_cellpaintr" not in profiles.uns
    assert list(profiles.obs.columns) == list(embedded.obs.columns)  # no scvi-tools columns were added
    assert not any(key.startswith("_scvi") for key in embedded.uns)
    np.testing.assert_array_equal(profiles.X, embedded.X)


@pytest.mark.slow
def test_writes_final_and_stage_embeddings_and_params(profiles, embedded):
    keys = ["X_cellpaintr", "X_cellpaintr_stage1", "X_cellpaintr_stage2", "X_cellpaintr_stage3"]
    assert set(keys) <= set(embedded.obsm)
    for key in keys:
        assert embedded.obsm[key].shape == (profiles.n_obs, TINY_MODEL["d_model"])
        assert np.isfinite(embedded.obsm[key]).all()
    np.testing.assert_array_equal(embedded.obsm["X_cellpaintr"], embedded.obsm["X_cellpaintr_stage3"])
    assert not np.allclose(embedded.obsm["X_cellpaintr_stage1"], embedded.obsm["X_cellpaintr_stage2"])
    params = embedded.uns["X_cellpaintr"]["params"]
    assert params["batch_key"] == "Metadata_Batch"
    assert params["labels_key"] == "Metadata_Compound"
    assert params["stages"] == [1, 2, 3]
    # no compound of BBBC021 was imaged in two weeks: "auto" takes the PCA-anchored model
    assert params["preset"] == "anchored"
    assert params["linear_path"]
    assert params["readout"] == "mean"


def test_anchored_preset_with_controls_whitens_a_narrower_projection(profiles):
    """With control_key the anchored preset embeds in ANCHORED_WITH_CONTROLS' width, starting from the PCA scores
    whitened by the controls: squared norms are the Ledoit-Wolf Mahalanobis distances to the control mean
    (scikit-learn's own computation, from a numpy SVD of the profiles)."""
    from sklearn.covariance import LedoitWolf

    from cpembed.tl._cellpaintr import ANCHORED_WITH_CONTROLS, untrained_model

    model, preset = untrained_model(
        profiles, None, "Metadata_Batch", "Metadata_Compound", None, "auto", {**TINY_MODEL, "n_latent": 6},
        "Metadata_is_negcon",
    )  # fmt: skip
    assert preset == "anchored"
    assert model.init_params_["non_kwargs"]["projection"] == ANCHORED_WITH_CONTROLS["projection"]
    x = np.asarray(profiles.X, dtype=np.float64)
    centred = x - x.mean(axis=0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    scores = centred @ components[:6].T
    controls = profiles.obs["Metadata_is_negcon"].to_numpy(dtype=bool)
    expected = LedoitWolf().fit(scores[controls]).mahalanobis(scores)
    embedded = model.module.project(torch.as_tensor(profiles.X)).numpy().astype(np.float64)
    np.testing.assert_allclose(np.square(embedded).sum(axis=1), expected, rtol=1e-3)
    plain, _ = untrained_model(profiles, None, "Metadata_Batch", "Metadata_Compound", None, "auto", TINY_MODEL)
    assert plain.module.embedding_dim == TINY_MODEL["d_model"]
    args = (profiles, None, "Metadata_Batch", "Metadata_Compound", None, "auto", TINY_MODEL, "Metadata_is_negcon")
    assert untrained_model(*args)[0].module.embedding_dim == ANCHORED_WITH_CONTROLS["n_latent"]


def test_control_whitening_needs_boolean_controls(profiles):
    from cpembed.model import CellPainTR
    from cpembed.tl._cellpaintr import training_view

    view = training_view(profiles, None, "Metadata_Batch", "Metadata_Compound", None)
    with pytest.raises(ValueError, match="control_key"):
        CellPainTR(view, **TINY_MODEL, linear_path=True, projection="control_whitened")
    with pytest.raises(ValueError, match="projection"):
        CellPainTR(view, **TINY_MODEL, projection="zca")
    with pytest.raises(TypeError, match="boolean"):
        training_view(profiles, None, "Metadata_Batch", "Metadata_Compound", None, "Metadata_Compound")


def test_control_whitening_refuses_too_few_or_constant_controls():
    from cpembed.model._cellpaintr import _pca_projection

    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(40, 6))
    one_control = np.zeros(40, dtype=bool)
    one_control[3] = True
    with pytest.raises(ValueError, match="at least two control wells"):
        _pca_projection(matrix, 3, 0, one_control)
    constant = matrix.copy()
    constant[:10] = 1.0
    with pytest.raises(ValueError, match="do not vary"):
        _pca_projection(constant, 3, 0, np.arange(40) < 10)


def test_auto_preset_follows_labels_shared_across_sources(profiles):
    from cpembed.tl._cellpaintr import auto_preset

    assert auto_preset(profiles, "Metadata_Batch", "Metadata_Compound", None) == "anchored"
    # compounds are replicated on several plates of their week: with plates as sources they are shared
    assert auto_preset(profiles, "Metadata_Plate", "Metadata_Compound", None) == "contrastive"
    assert auto_preset(profiles, None, "Metadata_Compound", None) == "anchored"
    with pytest.raises(ValueError, match="preset"):
        cpe.tl.cellpaintr(profiles, **KEYS, preset="best", copy=True)


@pytest.mark.slow
def test_given_model_embeds_in_place(profiles):
    adata = profiles.copy()
    torch.manual_seed(0)
    adata_train = profiles.copy()
    cpe.model.CellPainTR.setup_anndata(adata_train, **KEYS)
    model = cpe.model.CellPainTR(adata_train, **TINY_MODEL)
    model.train(stages=(1,), **{k: v for k, v in TINY_TRAIN.items() if k not in ("stage2", "stage3")})
    obs_before, uns_before = adata.obs.copy(), set(adata.uns)
    assert cpe.tl.cellpaintr(adata, **KEYS, model=model, key_added="X_given") is None
    np.testing.assert_array_equal(adata.obsm["X_given"], model.get_latent_representation(profiles))
    assert set(adata.uns) == uns_before | {"X_given"}
    assert adata.obs.equals(obs_before)
    with pytest.raises(ValueError, match="ignored"):
        cpe.tl.cellpaintr(adata, **KEYS, model=model, stage1={"max_epochs": 1})


def test_bad_keys_raise(profiles):
    with pytest.raises(KeyError, match="Metadata_Source"):
        cpe.tl.cellpaintr(profiles, batch_key="Metadata_Source", labels_key="Metadata_Compound")
    with pytest.raises(KeyError, match="Metadata_Label"):
        cpe.tl.cellpaintr(profiles, batch_key="Metadata_Batch", labels_key="Metadata_Label")
    with pytest.raises(KeyError, match="normalised"):
        cpe.tl.cellpaintr(profiles, **KEYS, layer="normalised")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_refuses_nonfinite_profiles_before_training(profiles, bad):
    adata = profiles.copy()
    adata.X[:] = bad
    with pytest.raises(ValueError, match=r"adata.X contains \d+ NaN or infinite values"):
        cpe.tl.cellpaintr(adata, **KEYS, model_kwargs=TINY_MODEL, **TINY_TRAIN)
    assert "X_cellpaintr" not in adata.obsm


@pytest.mark.slow
def test_refuses_nonfinite_profiles_given_a_model(profiles):
    adata_train = profiles.copy()
    cpe.model.CellPainTR.setup_anndata(adata_train, **KEYS)
    model = cpe.model.CellPainTR(adata_train, **TINY_MODEL)
    model.train(stages=(1,), **{k: v for k, v in TINY_TRAIN.items() if k not in ("stage2", "stage3")})
    adata = profiles.copy()
    adata.X[4, 2] = np.nan
    with pytest.raises(ValueError, match=r"adata.X contains 1 NaN or infinite values \(in 1 columns\)"):
        cpe.tl.cellpaintr(adata, **KEYS, model=model)


def test_missing_batch_labels_get_the_message_of_the_other_baselines(profiles):
    adata = profiles.copy()
    adata.obs["Metadata_Batch"] = adata.obs["Metadata_Batch"].astype(object).where(np.arange(adata.n_obs) > 1, None)
    with pytest.raises(ValueError, match=r"adata.obs\['Metadata_Batch'\] has 2 missing batch labels"):
        cpe.tl.cellpaintr(adata, **KEYS, model_kwargs=TINY_MODEL, **TINY_TRAIN)


def test_trained_model_embeds_another_study_and_records_the_features(profiles, caplog):
    """train_cellpaintr leaves its data untouched; tl.cellpaintr with the model reads a study with part of the
    features, matching them once for every stage's embedding, and records the counts in .uns."""
    adata = profiles.copy()
    model = cpe.tl.train_cellpaintr(adata, **KEYS, model_kwargs=TINY_MODEL, **TINY_TRAIN)
    assert adata.obsm.keys() == profiles.obsm.keys()
    assert set(adata.obs) == set(profiles.obs)
    assert isinstance(model, cpe.model.CellPainTR)
    assert model.is_trained_
    study = profiles[:, 10:].copy()
    with caplog.at_level("INFO", logger="cpembed"):
        cpe.tl.cellpaintr(study, model=model, key_added="X_transfer", stage_embeddings=True)
    assert caplog.text.count("20 of the 30 features matched") == 1
    assert study.uns["X_transfer"]["features"] == {"matched": 20, "by_identity": 0, "missing": 10, "unknown": 0}
    np.testing.assert_array_equal(study.obsm["X_transfer"], model.get_latent_representation(study))
    np.testing.assert_array_equal(study.obsm["X_transfer_stage1"], model.get_latent_representation(study, stage=1))
    with pytest.raises(ValueError, match="another feature set than adata's"):
        model.get_latent_representation(study, features=model.feature_match(profiles[:, 5:].copy()))
