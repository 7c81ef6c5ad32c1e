"""CellPainTR model: setup, the three stages, save/load, new sources, samplers and backed data, on BBBC021."""

from __future__ import annotations

import os
import signal
import warnings
from dataclasses import fields
from unittest import mock

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import Callback

import cpembed as cpe
from cpembed.model import ANCHORED_STAGES, CONTRASTIVE_STAGES, PAPER_STAGES, CellPainTR, StageConfig
from cpembed.model._data import contiguous_runs, read_rows
from cpembed.model._samplers import BlockShuffleBatchSampler, PKBatchSampler

N_FEATURES = 40  # a slice of BBBC021's features keeps the sequence short, so tests stay fast on a CPU
WEEKS = ["Week1", "Week2", "Week4", "Week5"]  # 264 wells of 4 imaging weeks
TINY = {"d_model": 8, "n_layers": 1, "d_mlp": 16, "filter_width": 8}
QUIET = {"accelerator": "cpu", "enable_progress_bar": False, "logger": False}
STAGES = {
    "stage1": {"max_epochs": 1, "batch_size": 64},
    "stage2": {"max_epochs": 2, "batch_size": 32, "lr": 1e-3},
    "stage3": {"max_epochs": 1, "batch_size": 64, "lr": 1e-3},
}


@pytest.fixture(scope="module")
def profiles() -> ad.AnnData:
    """BBBC021 wells of four weeks, normalised to each plate's DMSO wells and clipped (the paper's preprocessing)."""
    adata = cpe.datasets.bbbc021()
    adata = adata[adata.obs["Metadata_Batch"].isin(WEEKS)].copy()
    cpe.pp.drop_nonfinite(adata)
    cpe.pp.control_variation_filter(adata, "Metadata_Plate", "Metadata_is_negcon")
    cpe.pp.normalize_to_controls(adata, "Metadata_Plate", "Metadata_is_negcon")
    cpe.pp.clip_quantiles(adata)
    return adata[:, :N_FEATURES].copy()


def _setup(adata: ad.AnnData, **kwargs) -> ad.AnnData:
    adata = adata.copy()
    CellPainTR.setup_anndata(adata, batch_key="Metadata_Batch", labels_key="Metadata_Compound", **kwargs)
    return adata


@pytest.fixture(scope="module")
def trained(profiles) -> CellPainTR:
    model = CellPainTR(_setup(profiles), **TINY)
    model.train(**STAGES, seed=0, **QUIET)
    return model


@pytest.fixture(scope="module")
def saved(trained, tmp_path_factory):
    path = tmp_path_factory.mktemp("cellpaintr") / "model"
    trained.save(str(path))
    return path


@pytest.mark.slow
def test_one_seed_gives_one_model_whatever_the_global_random_state(profiles, trained):
    """Initial weights and training (masks, sampling, dropout) depend on the seeds only, not on torch's global
    generator, which is left as the caller had it."""
    torch.manual_seed(12345)
    state = torch.random.get_rng_state()
    model = CellPainTR(_setup(profiles), **TINY)
    assert torch.equal(torch.random.get_rng_state(), state)
    model.train(**STAGES, seed=0, **QUIET)
    assert torch.equal(torch.random.get_rng_state(), state)
    np.testing.assert_array_equal(model.get_latent_representation(), trained.get_latent_representation())
    first, second = (CellPainTR(_setup(profiles), **TINY, seed=seed).module.state_dict() for seed in (0, 1))
    assert not torch.equal(first["blocks.0.mlp.0.weight"], second["blocks.0.mlp.0.weight"])


def test_each_stage_has_its_own_finite_embedding(trained):
    embeddings = {stage: trained.get_latent_representation(stage=stage) for stage in (1, 2, 3)}
    for embedding in embeddings.values():
        assert embedding.shape == (trained.adata.n_obs, TINY["d_model"])
        assert embedding.dtype == np.float32
        assert np.isfinite(embedding).all()
    assert not np.allclose(embeddings[1], embeddings[2])
    assert not np.allclose(embeddings[2], embeddings[3])
    np.testing.assert_array_equal(trained.get_latent_representation(), embeddings[3])


def test_history_records_every_stage_epoch(trained):
    for stage, epochs in ((1, 1), (2, 2), (3, 1)):
        history = trained.history[f"stage{stage}"]
        assert len(history) == epochs
        assert np.isfinite(history["loss"]).all()
        assert (history["n_skipped"] == 0).all()
        assert ("supcon" in history) == (stage > 1)
        assert ("structure" in history) == (stage > 1)  # the default (contrastive) preset keeps PCA neighbourhoods
    stage2 = trained.history["stage2"]
    np.testing.assert_allclose(stage2["loss"], stage2["cwmm"] + stage2["supcon"] + stage2["structure"], rtol=1e-5)


def test_indices_select_rows(trained):
    rows = np.array([5, 1, 200, 2])
    np.testing.assert_allclose(
        trained.get_latent_representation(indices=rows, batch_size=3),
        trained.get_latent_representation()[rows],
        rtol=1e-5,
        atol=1e-6,
    )


def test_save_load_is_exact(trained, saved, profiles):
    loaded = CellPainTR.load(str(saved), adata=_setup(profiles))
    for stage in (1, 2, 3, None):
        np.testing.assert_array_equal(
            loaded.get_latent_representation(stage=stage), trained.get_latent_representation(stage=stage)
        )
    assert list(loaded.history) == ["stage1", "stage2", "stage3"]


def test_mismatched_features_raise(saved, trained, profiles):
    with pytest.raises(ValueError, match="features"):
        CellPainTR.load(str(saved), adata=_setup(profiles[:, 1:]))
    renamed = profiles[:, :5].copy()
    renamed.var_names = [f"feature_{index}" for index in range(5)]
    with pytest.raises(ValueError, match="None of the 5 features of adata"):
        trained.get_latent_representation(renamed)


def test_features_in_another_order_give_the_same_embedding(trained, profiles):
    np.testing.assert_array_equal(
        trained.get_latent_representation(profiles[:, ::-1].copy()), trained.get_latent_representation(profiles)
    )


def _with_unknown_features(adata: ad.AnnData, n: int) -> ad.AnnData:
    """``adata`` with ``n`` more features the model never saw (random values, Brightfield channel)."""
    rng = np.random.default_rng(0)
    extra = ad.AnnData(
        rng.normal(size=(adata.n_obs, n)).astype(np.float32),
        obs=adata.obs[[]],
        var=pd.DataFrame(index=[f"Cells_Intensity_MeanIntensity_Brightfield{index}" for index in range(n)]),
    )
    combined = ad.concat([adata, extra], axis=1, merge="first")
    combined.obs = adata.obs.copy()
    return combined


def test_a_study_with_another_feature_set_is_read_with_the_missing_features_masked(trained, profiles, caplog):
    """Half of the model's features, shuffled, plus three unknown ones: the embedding is the network's on the
    model's features with the missing ones masked (computed here on the module directly), unknown ones ignored."""
    rng = np.random.default_rng(1)
    kept = rng.permutation(profiles.var_names[::2].to_numpy())
    study = _with_unknown_features(profiles[:, kept].copy(), 3)
    with caplog.at_level("INFO", logger="cpembed"):
        embedding = trained.get_latent_representation(study)
    assert "20 of the 40 features matched (0 of them by identity), 20 missing and masked, 3 unknown" in caplog.text
    x = np.zeros(profiles.shape, dtype=np.float32)
    x[:, ::2] = profiles.X[:, ::2]
    mask = np.zeros(profiles.shape, dtype=bool)
    mask[:, 1::2] = True
    sources = profiles.obs["Metadata_Batch"].cat.codes.to_numpy().astype(np.int64)
    with torch.inference_mode():
        expected = trained.module.embed(torch.from_numpy(x), torch.from_numpy(sources), torch.from_numpy(mask))
    np.testing.assert_allclose(embedding, expected.numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(embedding, trained.get_latent_representation(profiles), atol=1e-3)
    match = trained.feature_match(study)
    assert match.counts() == {"matched": 20, "by_identity": 0, "missing": 20, "unknown": 3}
    with pytest.warns(UserWarning, match="only 19 of the model's 40 features"):
        trained.get_latent_representation(profiles[:, :19].copy())


def test_a_loaded_model_embeds_another_feature_set_as_the_trained_one(trained, saved, profiles, tmp_path):
    folder = tmp_path / "with_data"
    trained.save(str(folder), save_anndata=True)
    loaded = CellPainTR.load(str(folder))
    study = profiles[:, 5:30].copy()
    np.testing.assert_array_equal(loaded.get_latent_representation(study), trained.get_latent_representation(study))
    assert loaded.describe() == trained.describe()


def test_model_card_lists_sources_features_and_settings(trained, profiles):
    card = trained.describe()
    for week in WEEKS:
        assert f"- {week}: {(profiles.obs['Metadata_Batch'] == week).sum()} wells" in card
    assert f"## Features ({N_FEATURES})" in card
    assert "- compartment: Cells 40" in card
    assert "- measurement: AreaShape 40" in card
    assert "## Training (contrastive)" in card
    assert "- stage 2: max_epochs 2, batch_size 32, lr 0.001" in card
    assert "feature_dropout (0.2, 0.6)" in card  # the preset's, kept where the stage settings did not change it
    assert "d_model 8, n_layers 1" in card
    assert "(not trained)" not in card
    untrained = CellPainTR(_setup(profiles), **TINY).describe()
    assert "## Training (not trained)" in untrained
    assert "- Trained: no" in untrained


def test_unseen_source_uses_the_unknown_token(trained, profiles):
    query = profiles[:20].copy()
    query.obs["Metadata_Batch"] = "NewLab"
    with pytest.warns(UserWarning, match="NewLab"):
        embedding = trained.get_latent_representation(query)
    module = trained.module.eval()
    with torch.inference_mode():
        x = torch.from_numpy(np.asarray(query.X, dtype=np.float32))
        unknown = torch.full((query.n_obs,), module.unknown_source_index)
        expected = module.embed(x, unknown).numpy()
    np.testing.assert_allclose(embedding, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="NewLab"):
        trained.get_latent_representation(query, unseen_source="raise")
    without_sources = query.copy()
    del without_sources.obs["Metadata_Batch"]
    with pytest.warns(UserWarning, match="no column 'Metadata_Batch'"):
        np.testing.assert_array_equal(trained.get_latent_representation(without_sources), embedding)
    with pytest.raises(KeyError, match="Metadata_Batch"):
        trained.get_latent_representation(without_sources, unseen_source="raise")


def test_add_source_fits_only_its_token(saved, profiles):
    model = CellPainTR.load(str(saved), adata=_setup(profiles))
    before = {name: value.clone() for name, value in model.module.state_dict().items()}
    unknown_before = before["embeddings.source_embedding.weight"][model.n_sources]
    new_wells = profiles[profiles.obs["Metadata_Batch"] == "Week1"].copy()
    model.add_source(new_wells, "NewLab", {"max_epochs": 1, "batch_size": 16}, **QUIET)

    after = model.module.state_dict()
    for name, value in before.items():
        if name != "embeddings.source_embedding.weight":
            torch.testing.assert_close(after[name], value, rtol=0, atol=0)
    tokens_before, tokens_after = (
        before["embeddings.source_embedding.weight"],
        after["embeddings.source_embedding.weight"],
    )
    n_old = len(tokens_before) - 1
    assert tokens_after.shape[0] == tokens_before.shape[0] + 1
    torch.testing.assert_close(tokens_after[:n_old], tokens_before[:n_old], rtol=0, atol=0)  # known sources
    torch.testing.assert_close(tokens_after[-1], unknown_before, rtol=0, atol=0)  # unknown token, moved last
    assert not torch.equal(tokens_after[n_old], unknown_before)  # the new token moved away from its start
    assert model.source_names[-1] == "NewLab"
    assert "add_source:NewLab" in model.history

    query = new_wells.copy()
    query.obs["Metadata_Batch"] = "NewLab"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        embedding = model.get_latent_representation(query)
    assert np.isfinite(embedding).all()
    with pytest.raises(ValueError, match="already known"):
        model.add_source(new_wells, "NewLab", **QUIET)


def test_added_source_survives_save_load(saved, profiles, tmp_path):
    model = CellPainTR.load(str(saved), adata=_setup(profiles))
    new_wells = profiles[:32].copy()
    model.add_source(new_wells, "NewLab", {"max_epochs": 1, "batch_size": 16}, **QUIET)
    model.save(str(tmp_path / "grown"))
    loaded = CellPainTR.load(str(tmp_path / "grown"), adata=_setup(profiles))
    new_wells.obs["Metadata_Batch"] = "NewLab"
    np.testing.assert_array_equal(
        loaded.get_latent_representation(new_wells), model.get_latent_representation(new_wells)
    )


@pytest.mark.slow
def test_warmup_trains_only_source_tokens(profiles):
    torch.manual_seed(0)
    model = CellPainTR(_setup(profiles[:200]), **TINY)
    before = {name: value.clone() for name, value in model.module.state_dict().items()}
    warmup_only = {"max_epochs": 1, "warmup_epochs": 1, "batch_size": 32, "lr": 1e-2}
    model.train(stage2=warmup_only, stages=(2,), **QUIET)
    after = model.module.state_dict()
    changed = {name for name, value in before.items() if not torch.equal(after[name], value)}
    assert changed == {"embeddings.source_embedding.weight"}
    assert all(parameter.requires_grad for parameter in model.module.parameters())  # unfrozen again


def test_non_finite_batches_are_skipped(profiles):
    adata = profiles[:64].copy()
    adata.X[0] = 1e38  # finite input whose squared reconstruction error overflows float32
    torch.manual_seed(0)
    model = CellPainTR(_setup(adata), **TINY)
    model.train(stage1={"max_epochs": 1, "batch_size": 16}, stages=(1,), **QUIET)
    history = model.history["stage1"]
    assert history["n_skipped"].iloc[0] == 1
    assert history["n_batches"].iloc[0] == 4
    assert np.isfinite(history["loss"]).all()
    assert all(torch.isfinite(value).all() for value in model.module.state_dict().values())


@pytest.mark.slow
def test_backed_file_trains_and_matches_memory(profiles, tmp_path):
    path = tmp_path / "profiles.h5ad"
    profiles.copy().write_h5ad(path)  # writing turns string columns into categoricals: keep the fixture as it is
    backed = ad.read_h5ad(path, backed="r")
    CellPainTR.setup_anndata(backed, batch_key="Metadata_Batch", labels_key="Metadata_Compound")
    torch.manual_seed(0)
    model = CellPainTR(backed, **TINY)
    model.train(stage1={"max_epochs": 1, "batch_size": 64}, stages=(1,), block_size=128, **QUIET)
    embedding = model.get_latent_representation(batch_size=100)
    assert isinstance(embedding, np.ndarray)
    assert embedding.shape == (profiles.n_obs, TINY["d_model"])
    in_memory = model.get_latent_representation(profiles)
    np.testing.assert_allclose(embedding, in_memory, rtol=1e-5, atol=1e-6)
    backed.file.close()


def test_view_anndata_setup_prints(trained, capsys):
    trained.view_anndata_setup()
    assert "Metadata_Batch" in capsys.readouterr().out


def test_bad_setup_raises(profiles):
    adata = profiles[:10].copy()
    with pytest.raises(KeyError, match="Metadata_Nope"):
        CellPainTR.setup_anndata(adata, batch_key="Metadata_Nope")
    with pytest.raises(KeyError, match="raw_counts"):
        CellPainTR.setup_anndata(adata, layer="raw_counts", batch_key="Metadata_Batch")
    adata.obs["label"] = [None, *adata.obs["Metadata_Compound"].astype(str)[1:]]
    with pytest.raises(ValueError, match="unlabeled_category"):
        CellPainTR.setup_anndata(adata, batch_key="Metadata_Batch", labels_key="label")


def test_contrastive_stages_need_labels(profiles):
    adata = profiles[:10].copy()
    CellPainTR.setup_anndata(adata, batch_key="Metadata_Batch")
    model = CellPainTR(adata, **TINY)
    with pytest.raises(ValueError, match="labels_key"):
        model.train(**QUIET)
    with pytest.raises(ValueError, match="mask_ratio"):
        StageConfig(max_epochs=1, batch_size=8, lr=1e-3, mask_ratio=(0.5, 0.2))


def test_n_latent_is_the_width_of_every_embedding_and_survives_save_load(profiles, tmp_path):
    """A linear-path model with n_latent embeds, per stage and after save/load, in n_latent dimensions, starting at
    a PCA of that many components (scikit-learn's exact solver), and its model card says so."""
    from sklearn.decomposition import PCA

    adata = _setup(profiles)
    model = CellPainTR(adata, **TINY, readout="mean", linear_path=True, n_latent=3)
    before = model.module.project(torch.as_tensor(adata.X)).numpy()
    expected = PCA(n_components=3, svd_solver="full").fit_transform(np.asarray(adata.X, dtype=np.float64))
    np.testing.assert_allclose(np.abs(before), np.abs(expected), rtol=1e-3, atol=1e-3)  # components up to sign
    model.train(stage1=STAGES["stage1"], stages=(1,), seed=0, **QUIET)
    assert model.get_latent_representation(stage=1).shape == (adata.n_obs, 3)
    assert "embedding dimensions 3" in model.describe()
    model.save(str(tmp_path / "model"))
    loaded = CellPainTR.load(str(tmp_path / "model"), adata=_setup(profiles))
    np.testing.assert_array_equal(loaded.get_latent_representation(), model.get_latent_representation())


def test_distribution_alignment_trains_the_correction(profiles):
    """Stage 3 aligning the sources' distributions of a label records its term and moves the embedding off the
    PCA projection through the correction."""
    adata = _setup(profiles)
    model = CellPainTR(adata, **TINY, readout="mean", linear_path=True)
    stage3 = {**STAGES["stage3"], "alignment": "distributions"}
    model.train(stage1=STAGES["stage1"], stage3=stage3, stages=(1, 3), preset="anchored", seed=0, **QUIET)
    history = model.history["stage3"]
    assert np.all(np.isfinite(history["align"]))
    assert float(history["align"].iloc[0]) > 0
    x = torch.as_tensor(adata.X[:8])
    moved = model.module.embed(x, torch.zeros(8, dtype=torch.long)) - model.module.project(x)
    assert float(moved.abs().max()) > 1e-4


@pytest.mark.slow
def test_presets_train_what_they_name(profiles):
    """The anchored preset moves the embedding away from its PCA start only through the correction, and needs the
    linear path; the paper preset trains no structure term; unknown presets and settings are refused."""
    adata = _setup(profiles)
    anchored = CellPainTR(adata, **TINY, readout="mean", linear_path=True)
    start = anchored.module.embed(torch.as_tensor(adata.X[:8]), torch.zeros(8, dtype=torch.long)).detach()
    np.testing.assert_allclose(start.numpy(), anchored.module.project(torch.as_tensor(adata.X[:8])).numpy(), atol=1e-5)
    anchored.train(**STAGES, preset="anchored", seed=0, **QUIET)
    history = anchored.history["stage3"]
    assert {"align", "correction"} <= set(history.columns)
    assert "supcon" not in history
    assert anchored.training_preset_ == "anchored"
    paper = CellPainTR(adata, **TINY)
    paper.train(**STAGES, stages=(1, 2), preset="paper", seed=0, **QUIET)
    assert "structure" not in paper.history["stage2"]
    assert "supcon" in paper.history["stage2"]
    with pytest.raises(ValueError, match="linear path"):
        CellPainTR(adata, **TINY).train(preset="anchored", **QUIET)
    with pytest.raises(ValueError, match="preset"):
        paper.train(preset="best", **QUIET)
    with pytest.raises(ValueError, match="alignment"):
        StageConfig(max_epochs=1, batch_size=8, lr=1e-3, alignment="plates")


def _departures(stage: StageConfig, paper: StageConfig) -> set[str]:
    return {field.name for field in fields(StageConfig) if getattr(stage, field.name) != getattr(paper, field.name)}


def test_presets_depart_from_the_paper_only_where_documented():
    """Stage 1 is the paper's in every preset; stages 2-3 change only the settings docs/concepts.md measures."""
    for preset in (CONTRASTIVE_STAGES, ANCHORED_STAGES):
        assert preset[1] == PAPER_STAGES[1]
    for stage in (2, 3):
        departures = _departures(CONTRASTIVE_STAGES[stage], PAPER_STAGES[stage])
        assert departures == {"lr", "structure_weight", "feature_dropout"}
        assert CONTRASTIVE_STAGES[stage].lr == pytest.approx(10 * PAPER_STAGES[stage].lr)
        assert CONTRASTIVE_STAGES[stage].feature_dropout == cpe.model.PRESET_FEATURE_DROPOUT
        assert ANCHORED_STAGES[stage].feature_dropout == (0.0, 0.0)


def test_profiles_without_variation_are_refused(profiles):
    adata = profiles[:20].copy()
    adata.X[:] = np.nan  # read as 0 by the model: nothing varies
    with pytest.raises(ValueError, match="do not vary"):
        CellPainTR(_setup(adata), **TINY)


def test_unlabeled_wells_stay_out_of_contrastive_batches(profiles):
    adata = profiles.copy()
    adata.obs["label"] = adata.obs["Metadata_Compound"].astype(str).where(~adata.obs["Metadata_is_negcon"], "unknown")
    CellPainTR.setup_anndata(adata, batch_key="Metadata_Batch", labels_key="label", unlabeled_category="unknown")
    model = CellPainTR(adata, **TINY)
    labels = model._label_codes(adata)
    np.testing.assert_array_equal(labels < 0, adata.obs["Metadata_is_negcon"].to_numpy())
    sampler = PKBatchSampler(labels, 32)
    assert not adata.obs["Metadata_is_negcon"].to_numpy()[np.concatenate(list(sampler))].any()


# ---------------------------------------------------------------- samplers


def _codes(values) -> np.ndarray:
    return np.unique(np.asarray(values), return_inverse=True)[1]


def test_pk_batches_hold_positives_and_cover_each_well_once(profiles):
    labels = _codes(profiles.obs["Metadata_Compound"])
    sources = _codes(profiles.obs["Metadata_Batch"])
    for groups in (None, sources):
        sampler = PKBatchSampler(labels, 32, wells_per_label=4, groups=groups, seed=3)
        batches = [np.asarray(batch) for batch in sampler]
        assert len(batches) == len(sampler)
        for batch in batches:
            assert np.bincount(labels[batch]).max() >= 2
            assert np.bincount(labels[batch])[np.unique(labels[batch])].min() >= 2  # every label has a positive
            if groups is not None:
                assert len(np.unique(sources[batch])) == 1  # stage 2: one source per batch
        drawn = np.concatenate(batches)
        assert len(drawn) == len(np.unique(drawn))
        np.testing.assert_array_equal(np.sort(drawn), sampler.indices)
    # wells whose label has a single well in its source cannot have a positive and are left out
    per_source = PKBatchSampler(labels, 32, groups=sources)
    pair_counts = {
        (s, lab): n for (s, lab), n in zip(*np.unique(np.c_[sources, labels], axis=0, return_counts=True), strict=False)
    }
    singles = [i for i in range(len(labels)) if pair_counts[(sources[i], labels[i])] < 2]
    assert not np.isin(singles, per_source.indices).any()


def test_samplers_shard_like_a_distributed_sampler(profiles):
    labels = _codes(profiles.obs["Metadata_Compound"])
    for make in (
        lambda **kw: PKBatchSampler(labels, 32, seed=1, **kw),
        lambda **kw: BlockShuffleBatchSampler(np.arange(len(labels)), 32, block_size=100, seed=1, **kw),
    ):
        full = [tuple(batch) for batch in make()]
        shards = [[tuple(batch) for batch in make(num_replicas=3, rank=rank)] for rank in range(3)]
        assert len({len(shard) for shard in shards}) == 1
        union = [batch for shard in shards for batch in shard]
        assert set(union) == set(full)
        assert len(union) == -(-len(full) // 3) * 3  # padded to a multiple of the replicas
        reshuffled = make()
        reshuffled.set_epoch(1)
        assert [tuple(batch) for batch in reshuffled] != full


def test_block_shuffle_keeps_batches_within_two_blocks():
    sampler = BlockShuffleBatchSampler(np.arange(1000), 50, block_size=200, seed=0)
    batches = [np.asarray(batch) for batch in sampler]
    np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(1000))
    assert max(len(np.unique(batch // 200)) for batch in batches) <= 2


def test_read_rows_matches_fancy_indexing(profiles, tmp_path):
    matrix = np.asarray(profiles.X, dtype=np.float32).copy()
    matrix[3, 2], matrix[7, 0] = np.nan, np.inf
    rows = np.array([7, 3, 3, 250, 120, 121, 0])
    expected = np.nan_to_num(matrix[rows], nan=0.0, posinf=0.0, neginf=0.0)
    np.testing.assert_array_equal(read_rows(matrix, rows), expected)
    with h5py.File(tmp_path / "m.h5", "w") as file:
        file["X"] = matrix
    with h5py.File(tmp_path / "m.h5", "r") as file:
        np.testing.assert_array_equal(read_rows(file["X"], rows, max_gap=2), expected)
    assert contiguous_runs(np.array([0, 1, 2, 10, 11, 40]), max_gap=8) == [(0, 12), (40, 41)]


class _RaiseAtBatch(Callback):
    """Raise ``error`` (or send ``signum`` to this process) at the end of the ``at``-th training batch of a run."""

    def __init__(self, at: int, error: BaseException | None = None, signum: int | None = None):
        self.at, self.error, self.signum, self.seen = at, error, signum, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seen += 1
        if self.seen == self.at and self.error is not None:
            raise self.error
        if self.seen == self.at:
            os.kill(os.getpid(), self.signum)


def _weights(model: CellPainTR) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.module.state_dict().items()}


def _assert_same_weights(model: CellPainTR, weights: dict[str, torch.Tensor]) -> None:
    after = model.module.state_dict()
    assert after.keys() == weights.keys()
    for name, value in weights.items():
        torch.testing.assert_close(after[name], value, rtol=0, atol=0)


STAGES_1_2 = {"stage1": STAGES["stage1"], "stage2": STAGES["stage2"], "stages": (1, 2)}


@pytest.mark.slow
def test_ctrl_c_restores_the_model_and_retraining_matches_a_fresh_model(profiles):
    """Ctrl-C in stage 2 (after stage 1 finished) raises KeyboardInterrupt, not SystemExit, and leaves the model as
    it was before train(): training it again gives the model a fresh one gives."""
    adata = _setup(profiles[:128])
    model = CellPainTR(adata, **TINY)
    before, sigint_handler = _weights(model), signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt, match="restored"):
        model.train(**STAGES_1_2, callbacks=[_RaiseAtBatch(3, KeyboardInterrupt())], **QUIET)
    _assert_same_weights(model, before)
    assert model.stage_states_ == {}
    assert model.history_ == {}
    assert not model.is_trained_
    assert model.training_preset_ is None
    assert signal.getsignal(signal.SIGINT) == sigint_handler  # Ctrl-C works again (Lightning ignores it while stopping)
    model.train(**STAGES_1_2, **QUIET)
    fresh = CellPainTR(adata, **TINY)
    fresh.train(**STAGES_1_2, **QUIET)
    np.testing.assert_array_equal(model.get_latent_representation(), fresh.get_latent_representation())


def test_sigterm_during_training_exits_non_zero_and_restores_the_model(profiles):
    """Lightning ends training on SIGTERM with a SystemExit of status 0; the model raises one that says why."""
    model = CellPainTR(_setup(profiles[:128]), **TINY)
    before = _weights(model)
    received = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        with pytest.raises(SystemExit) as stopped:
            model.train(**STAGES_1_2, callbacks=[_RaiseAtBatch(1, signum=signal.SIGTERM)], **QUIET)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert received == [signal.SIGTERM]
    assert "SIGTERM" in str(stopped.value.code)  # a message: the exit status is 1, not 0
    _assert_same_weights(model, before)
    assert model.stage_states_ == {}


def test_failed_add_source_leaves_the_model_unchanged(profiles):
    model = CellPainTR(_setup(profiles[:128]), **TINY)
    before, sources = _weights(model), list(model.source_names)
    with pytest.raises(RuntimeError, match="disk full"):
        model.add_source(profiles[128:192], "NewLab", callbacks=[_RaiseAtBatch(1, RuntimeError("disk full"))], **QUIET)
    assert model.source_names == sources
    assert list(model.init_params_["non_kwargs"]["added_sources"]) == []
    _assert_same_weights(model, before)
    model.add_source(profiles[128:192], "NewLab", {"max_epochs": 1}, **QUIET)
    assert model.source_names == [*sources, "NewLab"]


def test_add_source_reads_the_registered_layer(profiles):
    """With setup_anndata(layer=...), the new token is fitted on that layer, as training and embedding read it."""
    rng = np.random.default_rng(0)

    def with_layer(wells: ad.AnnData, x_noise: bool) -> ad.AnnData:
        wells = wells.copy()
        wells.layers["norm"] = wells.X.copy()
        if x_noise:
            wells.X = rng.normal(scale=100, size=wells.shape).astype(np.float32)
        return wells

    tokens = []
    for x_noise in (True, False):
        model = CellPainTR(_setup(with_layer(profiles[:128], x_noise), layer="norm"), **TINY)
        model.add_source(with_layer(profiles[128:192], x_noise), "NewLab", {"max_epochs": 1}, **QUIET)
        tokens.append(model.module.state_dict()["embeddings.source_embedding.weight"][model.n_sources - 1])
    torch.testing.assert_close(tokens[0], tokens[1], rtol=0, atol=0)
    with pytest.raises(KeyError, match="'norm' not found"):
        model.add_source(profiles[128:192], "OtherLab", **QUIET)


def test_latent_indices_outside_the_data_are_refused(trained):
    n_obs = trained.adata.n_obs
    with pytest.raises(IndexError, match=f"\\[0, {n_obs}\\).*10000"):
        trained.get_latent_representation(indices=[0, 10000])
    with pytest.raises(IndexError, match="-1"):
        trained.get_latent_representation(indices=[-1, 2])
    with pytest.raises(TypeError, match="integer"):
        trained.get_latent_representation(indices=[0.5])
    assert trained.get_latent_representation(indices=[]).shape == (0, TINY["d_model"])


def test_load_errors_name_the_folder_and_the_fix(saved, profiles, tmp_path):
    with pytest.raises(FileNotFoundError, match="No saved CellPainTR model"):
        CellPainTR.load(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="save_anndata=True"):
        CellPainTR.load(str(saved))
    other_source = profiles[:20].copy()
    other_source.obs["Metadata_Batch"] = "NewLab"
    with pytest.raises(ValueError, match=r"NewLab.*unknown-source token"):
        CellPainTR.load(str(saved), adata=other_source)
    with pytest.raises(ValueError, match="another order"):
        CellPainTR.load(str(saved), adata=profiles[:, ::-1].copy())
    with pytest.raises(ValueError, match=r"1 of the model's features are missing"):
        CellPainTR.load(str(saved), adata=profiles[:, 1:].copy())


def test_interrupted_save_leaves_the_folder_as_it_was(trained, tmp_path, monkeypatch):
    folder = tmp_path / "model"
    trained.save(str(folder))
    written = (folder / "model.pt").read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        trained.save(str(folder))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trained.save(str(folder), overwrite=True)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model"]  # no half-written folder left
    assert (folder / "model.pt").read_bytes() == written
    (folder / "notes.txt").write_text("mine")
    monkeypatch.undo()
    with pytest.raises(FileExistsError, match=r"notes\.txt"):
        trained.save(str(folder), overwrite=True)


def test_values_beyond_float32_are_refused_not_zeroed(profiles):
    """A finite float64 value that float32 cannot hold would become infinite, then be read as 0."""
    adata = profiles[:64].copy()
    adata.X = adata.X.astype(np.float64)
    adata.X[3, 2] = 1e39
    with pytest.raises(ValueError, match="beyond float32's range"):
        CellPainTR(_setup(adata), **TINY)


@pytest.mark.parametrize("feature_dropout", [(0.0, 0.0), (0.5, 0.5)])
def test_feature_dropout_masks_that_share_of_single_features(profiles, feature_dropout):
    """Without channel-wise masks (mask ratio 0) the masked share of the non-zero values is the dropout share."""
    from cpembed.model._training_plan import CellPainTRTrainingPlan

    model = CellPainTR(_setup(profiles), **TINY)
    config = StageConfig(max_epochs=1, batch_size=64, lr=1e-3, mask_ratio=(0.0, 0.0), feature_dropout=feature_dropout)
    plan = CellPainTRTrainingPlan(model.module, model.feature_groups, model.n_sources, config)
    plan.on_train_start()
    masks = []
    forward = model.module.forward
    with mock.patch.object(model.module, "forward", lambda x, s, mask: masks.append(mask) or forward(x, s, mask)):
        x = torch.from_numpy(profiles.X[:200])
        plan.stage_losses({"x": x, "source": torch.zeros(200, dtype=torch.long), "label": torch.zeros(200)})
    share = masks[0][x != 0].float().mean().item()
    assert share == pytest.approx(feature_dropout[0], abs=0.03)
    assert not masks[0][x == 0].any()


def test_feature_dropout_range_is_checked():
    with pytest.raises(ValueError, match="feature_dropout"):
        StageConfig(max_epochs=1, batch_size=8, lr=1e-3, feature_dropout=(0.2, 1.0))
