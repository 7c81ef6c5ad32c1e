"""Both models follow scvi-tools' conventions alike: registry, save/load, accelerator names, writes, quiet output."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException

import cpembed as cpe

MODELS = ["CellPainTR", "CWAMSN"]

#: Per model: tiny architecture, setup keys, one short CPU training, and the tl function's keys.
SETTINGS = {
    "CellPainTR": {
        "model": {"d_model": 8, "n_layers": 1, "d_mlp": 16, "filter_width": 8},
        "setup": {"batch_key": "Metadata_Batch", "labels_key": "Metadata_Compound"},
        "train": {"stages": (1,), "stage1": {"max_epochs": 1, "batch_size": 64}},
    },
    "CWAMSN": {
        "model": {
            "image_size": 16,
            "patch_size": 8,
            "embed_dim": 16,
            "depth": 1,
            "num_heads": 2,
            "hidden_dim": 32,
            "out_dim": 8,
            "n_prototypes": 8,
            "focal_size": 8,
            "n_focal_views": 2,
        },
        "setup": {"perturbation_key": "Metadata_Perturbation", "well_key": "Metadata_Well"},
        "train": {"max_epochs": 1, "batch_size": 8, "steps_per_epoch": 2},
    },
}

#: What Lightning prints or warns on every training run unless asked for.
LIBRARY_NOISE = ["litlogger", "GPU available", "TPU available", "does not have many workers"]

#: What scvi-tools' registration adds to the user's AnnData.
SCVI_UNS = {"_scvi_uuid", "_scvi_manager_uuid"}


#: Tiny models run fastest on one thread on a shared CPU.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """Per model, its data: 132 BBBC021 wells of two weeks (20 features), and 24 simulated image fields."""
    profiles = cpe.datasets.bbbc021()
    profiles = profiles[profiles.obs["Metadata_Batch"].isin(["Week1", "Week2"])].copy()
    cpe.pp.drop_nonfinite(profiles)
    cpe.pp.control_variation_filter(profiles, "Metadata_Plate", "Metadata_is_negcon")
    cpe.pp.normalize_to_controls(profiles, "Metadata_Plate", "Metadata_is_negcon")
    cpe.pp.clip_quantiles(profiles)
    path = tmp_path_factory.mktemp("conventions") / "images.h5"
    images = cpe.datasets.simulate_images(path, 2, 2, n_plates=2, n_sites=2, image_size=32, seed=0)
    return {"CellPainTR": profiles[:, :20].copy(), "CWAMSN": images}


def build(name: str, adata, **overrides):
    """A set-up copy of ``adata`` and an untrained model ``name`` on it."""
    cls = getattr(cpe.model, name)
    adata = adata.copy()
    cls.setup_anndata(adata, **SETTINGS[name]["setup"])
    return cls(adata, **{**SETTINGS[name]["model"], **overrides})


def train(model, **kwargs) -> None:
    name = type(model).__name__
    model.train(**{"accelerator": "cpu", "enable_progress_bar": False, **SETTINGS[name]["train"], **kwargs})


def snapshot(adata) -> dict:
    return {
        "obs": adata.obs.copy(),
        "uns": set(adata.uns),
        "obsm": set(adata.obsm),
        "layers": set(adata.layers),
        "X": None if adata.X is None else np.array(adata.X, copy=True),
    }


@pytest.mark.parametrize("name", MODELS)
def test_setup_records_fields_in_the_registry_and_adds_only_scvi_entries(name, datasets, capsys):
    adata = datasets[name].copy()
    before = snapshot(adata)
    cls = getattr(cpe.model, name)
    cls.setup_anndata(adata, **SETTINGS[name]["setup"])
    added_columns = set(adata.obs.columns) - set(before["obs"].columns)
    assert added_columns
    assert all(column.startswith("_scvi_") for column in added_columns)
    pd.testing.assert_frame_equal(adata.obs[before["obs"].columns], before["obs"])
    assert set(adata.uns) - before["uns"] == SCVI_UNS
    assert (set(adata.obsm), set(adata.layers)) == (before["obsm"], before["layers"])
    model = cls(adata, **SETTINGS[name]["model"])
    registry = model.registry_
    assert registry["model_name"] == name
    assert registry["setup_method_name"] == "setup_anndata"
    for key, value in SETTINGS[name]["setup"].items():
        assert registry["setup_args"][key] == value
    assert "uns" not in {field["data_registry"].get("attr_name") for field in registry["field_registries"].values()}
    model.view_anndata_setup()
    assert f"Setup via `{name}.setup_anndata`" in capsys.readouterr().out


@pytest.mark.parametrize("name", MODELS)
def test_save_load_round_trip_gives_exact_latents_and_history(name, datasets, tmp_path):
    model = build(name, datasets[name])
    train(model)
    latent = model.get_latent_representation()
    model.save(tmp_path / "model", save_anndata=True)
    loaded = getattr(cpe.model, name).load(tmp_path / "model", accelerator="cpu")
    np.testing.assert_array_equal(loaded.get_latent_representation(), latent)
    assert set(loaded.history_) == set(model.history_)
    for stage, losses in model.history_.items():
        assert isinstance(losses, pd.DataFrame)
        pd.testing.assert_frame_equal(loaded.history_[stage], losses)
    rows = [3, 0, 1]
    np.testing.assert_allclose(loaded.get_latent_representation(indices=rows), latent[rows], atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("accelerator", ["cpu", "auto", "gpu"])
def test_lightning_accelerator_names(name, accelerator, datasets):
    model = build(name, datasets[name])
    if accelerator == "gpu" and not torch.cuda.is_available():
        with pytest.raises(MisconfigurationException, match="gpu"):  # Lightning's message, for both models
            train(model, accelerator=accelerator)
        return
    train(model, accelerator=accelerator)
    assert model.is_trained_
    assert np.isfinite(model.get_latent_representation()).all()


@pytest.mark.parametrize("name", MODELS)
def test_tl_writes_only_obsm_and_uns_of_key_added(name, datasets):
    adata = datasets[name].copy()
    before = snapshot(adata)
    settings = SETTINGS[name]
    tl_function = {"CellPainTR": cpe.tl.cellpaintr, "CWAMSN": cpe.tl.cwamsn}[name]
    keys = settings["setup"].values()
    tl_function(
        adata,
        *keys,
        model_kwargs=settings["model"],
        key_added="X_test",
        accelerator="cpu",
        enable_progress_bar=False,
        **settings["train"],
    )
    pd.testing.assert_frame_equal(adata.obs, before["obs"])
    assert set(adata.uns) == before["uns"] | {"X_test"}
    # the parameters, and CellPainTR's count of the features it read (see test_tl_cellpaintr.py)
    assert set(adata.uns["X_test"]) == {"params"} | ({"features"} if name == "CellPainTR" else set())
    assert set(adata.obsm) == before["obsm"] | {"X_test"}
    assert set(adata.layers) == before["layers"]
    np.testing.assert_array_equal(adata.X, before["X"])


@pytest.mark.parametrize("name", MODELS)
def test_training_shows_no_library_noise_unless_cpembed_logs_at_debug(name, datasets, capfd, caplog):
    """Default output is the stage's progress bar: no device report, tips or worker advice, and no warning."""
    model = build(name, datasets[name])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(model, enable_progress_bar=True)
    output = "".join(capfd.readouterr()) + caplog.text
    assert [str(warning.message) for warning in caught] == []
    assert [phrase for phrase in LIBRARY_NOISE if phrase in output] == []
    caplog.clear()
    logger = logging.getLogger("cpembed")
    level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        with warnings.catch_warnings(record=True):  # at DEBUG the library's warnings pass too; not asserted here
            train(model)
    finally:
        logger.setLevel(level)
    assert "GPU available" in "".join(capfd.readouterr()) + caplog.text


@pytest.mark.parametrize("name", MODELS)
def test_training_writes_no_file_into_the_working_directory(name, datasets, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = build(name, datasets[name])
    model.train(accelerator="cpu", enable_progress_bar=False, **SETTINGS[name]["train"])
    assert list(tmp_path.iterdir()) == []
    assert len(model.history_) > 0
