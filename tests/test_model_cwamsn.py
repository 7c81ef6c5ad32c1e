import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from scipy.spatial.distance import pdist
from sklearn.decomposition import PCA

import cpembed as cpe
from cpembed.model._cwamsn_data import CrossWellSampler, PairBatches, prefetch_to_device
from cpembed.pp._aggregate import center_scale_to_controls, typical_variation_normalize
from cpembed.tl._handcrafted import TEXTURE_LEVELS, feature_names, field_features

REAL_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "images"
TINY = {
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
}
KEYS = {"perturbation_key": "Metadata_Perturbation", "well_key": "Metadata_Well"}
QUIET = {"accelerator": "cpu", "enable_progress_bar": False}


#: Tiny models run fastest on one thread on a shared CPU.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fields(tmp_path_factory):
    path = tmp_path_factory.mktemp("cwamsn") / "sim.h5"
    return cpe.datasets.simulate_images(path, 2, 2, n_plates=2, n_sites=2, image_size=32, seed=0)


def setup(adata):
    cpe.model.CWAMSN.setup_anndata(adata, **KEYS, plate_key="Metadata_Plate")
    return adata


def test_cross_well_sampler_pairs_distinct_wells_of_one_perturbation(fields):
    obs = fields.obs
    sampler = CrossWellSampler(obs["Metadata_Perturbation"], obs["Metadata_Well"], obs["image_index"])
    anchors, targets = sampler.sample(500, np.random.default_rng(0))
    by_row = obs.set_index("image_index")
    assert (by_row.loc[anchors, "Metadata_Well"].to_numpy() != by_row.loc[targets, "Metadata_Well"].to_numpy()).all()
    same = by_row.loc[anchors, "Metadata_Perturbation"].to_numpy() == by_row.loc[targets, "Metadata_Perturbation"]
    assert same.all()
    crosses_plates = by_row.loc[anchors, "Metadata_Plate"].to_numpy() != by_row.loc[targets, "Metadata_Plate"]
    assert crosses_plates.any()  # pairs may come from two plates, as in the paper
    drawn = pd.Series(by_row.loc[anchors, "Metadata_Perturbation"].to_numpy()).value_counts(normalize=True)
    assert drawn.min() > 0.5 / len(drawn)  # perturbations drawn uniformly, not by well count


def test_single_well_sampler_uses_one_image(fields):
    obs = fields.obs
    sampler = CrossWellSampler(obs["Metadata_Perturbation"], obs["Metadata_Well"], obs["image_index"], cross_well=False)
    anchors, targets = sampler.sample(50, np.random.default_rng(0))
    np.testing.assert_array_equal(anchors, targets)


def test_sampler_needs_two_wells():
    with pytest.raises(ValueError, match="two wells"):
        CrossWellSampler(["a", "a"], ["w1", "w1"], [0, 1])


def test_pair_batches_shard_an_epoch_among_processes(fields):
    """Under DDP every process draws its own batches of the epoch, as many as the others, and one process draws
    exactly the batches a single process would."""
    obs = fields.obs
    sampler = CrossWellSampler(obs["Metadata_Perturbation"], obs["Metadata_Well"], obs["image_index"])
    images = cpe.module.StoreImages(fields.uns["image_store"]["path"])
    alone = PairBatches(images, sampler, 4, 5, seed=0)
    shards = [PairBatches(images, sampler, 4, 5, seed=0, num_replicas=2, rank=rank) for rank in (0, 1)]
    assert len(alone) == 5
    assert [len(shard) for shard in shards] == [3, 3]
    drawn = [alone[index][2] for index in range(len(alone))]
    np.testing.assert_array_equal(shards[0][1][2], drawn[2])
    np.testing.assert_array_equal(shards[1][1][2], drawn[3])
    with pytest.raises(ValueError, match="rank"):
        PairBatches(images, sampler, 4, 5, seed=0, num_replicas=2, rank=2)


def test_prefetch_to_device_yields_every_batch_in_order_on_the_device():
    batches = [(torch.full((2, 3), i), torch.arange(i)) for i in range(4)]
    moved = list(prefetch_to_device(iter(batches), torch.device("cpu")))
    assert len(moved) == len(batches)
    for (first, second), (expected_first, expected_second) in zip(moved, batches, strict=True):
        assert torch.equal(first, expected_first)
        assert torch.equal(second, expected_second)
        assert first.device.type == "cpu"
    assert list(prefetch_to_device(iter([]), torch.device("cpu"))) == []


def test_train_save_load_exact_latents(fields, tmp_path):
    adata = setup(fields.copy())
    model = cpe.model.CWAMSN(adata, **TINY)
    model.train(max_epochs=2, batch_size=8, steps_per_epoch=2, **QUIET)
    losses = model.history_["train"]
    assert list(losses.index) == [0, 1]
    assert np.isfinite(losses["loss"]).all()
    latent = model.get_latent_representation()
    assert latent.shape == (adata.n_obs, TINY["embed_dim"])
    assert np.isfinite(latent).all()
    model.save(tmp_path / "model")
    with pytest.raises(FileExistsError):
        model.save(tmp_path / "model")
    content = torch.load(tmp_path / "model" / "model.pt", weights_only=True)  # no pickled objects in the file
    assert set(content) == {"model_state_dict", "var_names", "attr_dict"}
    fresh = fields.copy()  # not set up: load replays the saved setup
    loaded = cpe.model.CWAMSN.load(tmp_path / "model", fresh, accelerator="cpu")
    np.testing.assert_array_equal(loaded.get_latent_representation(), latent)
    pd.testing.assert_frame_equal(loaded.history_["train"], losses)
    model.train(max_epochs=1, batch_size=8, steps_per_epoch=2, **QUIET)
    assert list(model.history_["train"].index) == [0, 1, 2]  # a second run continues the epochs


def test_latent_indices_select_rows(fields):
    model = cpe.model.CWAMSN(setup(fields.copy()), **TINY)
    latent = model.get_latent_representation()
    np.testing.assert_allclose(model.get_latent_representation(indices=[5, 0], batch_size=1), latent[[5, 0]], atol=1e-5)
    with pytest.raises(IndexError, match="indices"):
        model.get_latent_representation(indices=[fields.n_obs])


def test_training_does_not_depend_on_the_number_of_loader_workers(fields):
    """Each epoch's batches are drawn from the seed, the epoch and the batch number, in whichever worker reads them."""
    latents, histories = [], []
    for workers in (0, 2):
        model = cpe.model.CWAMSN(setup(fields.copy()), **TINY)
        model.train(max_epochs=2, batch_size=4, steps_per_epoch=3, num_workers=workers, **QUIET)
        latents.append(model.get_latent_representation())
        histories.append(model.history_["train"])
    np.testing.assert_array_equal(*latents)
    pd.testing.assert_frame_equal(*histories)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_training_captures_the_step_once_and_replays_it(fields, monkeypatch):
    """On one GPU the Lightning plan runs the step as a CUDA graph: three eager steps, one capture, then replays
    (whose equality with eager steps ``test_cuda_graph_replays_equal_eager_steps`` checks)."""
    from cpembed.module import MSNTrainingStep

    captures = []
    capture = MSNTrainingStep._capture

    def counted_capture(self, inputs):
        captures.append(self.n_steps)
        capture(self, inputs)

    monkeypatch.setattr(MSNTrainingStep, "_capture", counted_capture)
    model = cpe.model.CWAMSN(setup(fields.copy()), **TINY)
    model.train(max_epochs=2, batch_size=8, steps_per_epoch=4, accelerator="gpu", enable_progress_bar=False)
    assert captures == [4]  # the fourth step, after three eager warm-up steps; the other four are replays
    assert model.device.type == "cuda"
    assert np.isfinite(model.history_["train"]["loss"]).all()
    assert np.isfinite(model.get_latent_representation()).all()


DDP_SCRIPT = """
import os, sys
import numpy as np, torch
import cpembed as cpe

torch.set_num_threads(1)
folder, rank = sys.argv[1], int(os.environ.get("LOCAL_RANK", "0"))
adata = cpe.datasets.simulate_images(
    os.path.join(folder, f"store{rank}.h5"), 2, 2, n_plates=2, n_sites=2, image_size=32, seed=0
)
cpe.model.CWAMSN.setup_anndata(adata, perturbation_key="Metadata_Perturbation", well_key="Metadata_Well")
model = cpe.model.CWAMSN(adata, **{tiny})
model.train(
    max_epochs=2, batch_size=4, steps_per_epoch=4, accelerator="cpu", devices=2, strategy="ddp",
    enable_progress_bar=False,
)
np.save(os.path.join(folder, f"weights{rank}.npy"), model.module.encoder.patch_embed.weight.detach().numpy())
np.save(os.path.join(folder, f"losses{rank}.npy"), model.history_["train"]["loss"].to_numpy())
"""


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_keeps_them_in_step(tmp_path):
    """Lightning's DDP (two processes, gloo): each draws its own pairs, gradients are averaged, so both end with the
    same weights and the same epoch losses (reduced over the processes)."""
    script = tmp_path / "train_ddp.py"
    script.write_text(DDP_SCRIPT.replace("{tiny}", repr(TINY)))
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_array_equal(np.load(tmp_path / "weights0.npy"), np.load(tmp_path / "weights1.npy"))
    losses = [np.load(tmp_path / f"losses{rank}.npy") for rank in (0, 1)]
    assert len(losses[0]) == 2
    np.testing.assert_array_equal(*losses)


def test_training_changes_weights_and_single_well_mode_runs(fields, capsys, tmp_path):
    adata = with_store(fields, tmp_path / "store.h5", lambda images: images)
    model = cpe.model.CWAMSN(setup(adata), **TINY, cross_well=False)
    before = model.module.encoder.patch_embed.weight.detach().clone()
    model.train(max_epochs=1, batch_size=8, steps_per_epoch=2, **QUIET)
    assert not torch.equal(before, model.module.encoder.patch_embed.weight)
    with h5py.File(tmp_path / "store.h5", "r+"):  # training closed the store: a segmentation can write its masks
        pass
    repr(model)  # scvi-tools prints the summary
    assert "MSN (single-well)" in capsys.readouterr().out


def test_setup_errors(fields):
    adata = fields.copy()
    with pytest.raises(ValueError, match="setup_anndata"):
        cpe.model.CWAMSN(adata, **TINY)
    with pytest.raises(KeyError, match="Metadata_Nope"):
        cpe.model.CWAMSN.setup_anndata(adata, "Metadata_Nope", "Metadata_Well")
    del adata.uns["image_store"]
    with pytest.raises(KeyError, match="image store"):
        cpe.model.CWAMSN.setup_anndata(adata, **KEYS)


def with_store(adata, path, transform):
    """A copy of ``adata`` on a copy of its store at ``path`` whose images are ``transform(images)``."""
    shutil.copy(adata.uns["image_store"]["path"], path)
    with h5py.File(path, "r+") as file:
        file["images"][...] = transform(file["images"][...])
    out = adata.copy()
    out.uns["image_store"] = {**adata.uns["image_store"], "path": str(path)}
    return out


def setup_with_controls(adata):
    cpe.model.CWAMSN.setup_anndata(adata, **KEYS, plate_key="Metadata_Plate", control_key="Metadata_is_negcon")
    return adata


def test_group_channel_statistics_equal_numpy_per_plate(fields):
    from cpembed.module import StoreImages, group_channel_statistics

    obs = fields.obs
    rows, plates = obs["image_index"].to_numpy(), obs["Metadata_Plate"].astype(str).to_numpy()
    labels, stats = group_channel_statistics(StoreImages(fields.uns["image_store"]["path"]), rows, plates, 5)
    images = cpe.io.read_store_images(fields.uns["image_store"]["path"], rows) / 255.0
    for label, (mean, std) in zip(labels, stats, strict=True):
        pixels = images[plates == label].transpose(1, 0, 2, 3).reshape(images.shape[1], -1)
        np.testing.assert_allclose(mean, pixels.mean(axis=1), rtol=1e-5)
        np.testing.assert_allclose(std, pixels.std(axis=1), rtol=1e-4)


def test_plate_control_standardisation_removes_plate_gains_and_keeps_image_intensity(fields, tmp_path):
    """Doubling a whole plate (controls included) leaves its embeddings unchanged; dimming one image does not."""
    halved = with_store(fields, tmp_path / "halved.h5", lambda images: images // 2)  # doubles stay in uint8
    plate = (halved.obs.set_index("image_index").sort_index()["Metadata_Plate"] == "plate_1").to_numpy()
    doubled_plate = with_store(
        halved, tmp_path / "plate.h5", lambda images: np.where(plate[:, None, None, None], 2 * images, images)
    )
    treated = halved.obs.index[~halved.obs["Metadata_is_negcon"].to_numpy()][0]
    row = int(halved.obs.loc[treated, "image_index"])
    doubled_image = with_store(halved, tmp_path / "image.h5", lambda images: _double_row(images, row))
    latents = {}
    for normalization in ("plate_controls", "image"):
        model = cpe.model.CWAMSN(setup_with_controls(halved.copy()), **TINY, normalization=normalization)
        model.train(max_epochs=1, batch_size=8, steps_per_epoch=2, **QUIET)
        latents[normalization] = [
            model.get_latent_representation(adata) for adata in (halved, doubled_plate, doubled_image)
        ]
    base, plate_doubled, image_doubled = latents["plate_controls"]
    np.testing.assert_allclose(plate_doubled, base, atol=1e-4)
    position = halved.obs_names.get_loc(treated)
    assert np.abs(image_doubled[position] - base[position]).max() > 1e-2  # the intensity phenotype is kept
    np.testing.assert_allclose(np.delete(image_doubled, position, 0), np.delete(base, position, 0), atol=1e-5)
    base, _, image_doubled = latents["image"]
    np.testing.assert_allclose(image_doubled, base, atol=1e-4)  # per-view standardisation erases it


def _double_row(images, row):
    out = images.copy()
    out[row] *= 2
    return out


def test_plate_control_standardisation_errors(fields):
    adata = setup(fields.copy())
    with pytest.raises(ValueError, match="control_key"):
        cpe.model.CWAMSN(adata, **TINY, normalization="plate_controls")
    with pytest.raises(ValueError, match="not one of"):
        cpe.model.CWAMSN(adata, **TINY, normalization="plate")
    adata = fields.copy()
    adata.obs["Metadata_is_negcon"] = adata.obs["Metadata_is_negcon"] & (adata.obs["Metadata_Plate"] == "plate_0")
    model = cpe.model.CWAMSN(setup_with_controls(adata), **TINY, normalization="plate_controls")
    with pytest.raises(ValueError, match=r"1 plates have no negative-control images.*plate_1"):
        model.train(max_epochs=1, batch_size=8, steps_per_epoch=1, **QUIET)
    without_controls = fields.copy()
    del without_controls.obs["Metadata_is_negcon"]
    with pytest.raises(KeyError, match="Metadata_is_negcon"):  # data to embed must mark its controls too
        model.get_latent_representation(without_controls)
    adata.obs["Metadata_is_negcon"] = adata.obs["Metadata_is_negcon"].astype(int)
    with pytest.raises(TypeError, match="must be boolean"):
        setup_with_controls(adata)


def test_tl_cwamsn_writes_obsm_and_copy_leaves_input(fields):
    adata = fields.copy()
    train = {"max_epochs": 1, "batch_size": 8, "steps_per_epoch": 1, **QUIET}
    out = cpe.tl.cwamsn(adata, **KEYS, model_kwargs=TINY, copy=True, **train)
    assert "X_cwamsn" not in adata.obsm
    assert out.obsm["X_cwamsn"].shape == (adata.n_obs, 16)
    params = out.uns["X_cwamsn"]["params"]
    assert params["cross_well"] is True
    assert params["steps_per_epoch"] == 1
    assert params["perturbation_key"] == KEYS["perturbation_key"]
    assert np.isfinite(params["final_loss"])
    assert cpe.tl.cwamsn(adata, **KEYS, model_kwargs=TINY, **train) is None
    np.testing.assert_array_equal(adata.obsm["X_cwamsn"], out.obsm["X_cwamsn"])  # seeded: the same model


# --------------------------------------------------------------------------- aggregate


def brute_force_center_scale(matrix, plates, is_control):
    out = np.empty_like(matrix, dtype=float)
    for plate in np.unique(plates):
        controls = matrix[(plates == plate) & is_control]
        for i in np.flatnonzero(plates == plate):
            for j in range(matrix.shape[1]):
                out[i, j] = (matrix[i, j] - controls[:, j].mean()) / (controls[:, j].std(ddof=1) + 1e-6)
    return out


def assert_same_whitening(ours, matrix, batches, is_control):
    """Whitening is unique up to rotation: compare with sklearn's PCA(whiten=True) through pairwise distances."""
    for batch in np.unique(batches):
        rows = batches == batch
        reference = PCA(whiten=True).fit(matrix[rows & is_control]).transform(matrix[rows])
        np.testing.assert_allclose(pdist(ours[rows]), pdist(reference), rtol=1e-6, atol=1e-8)
        controls = ours[rows & is_control]
        np.testing.assert_allclose(np.cov(controls, rowvar=False), np.eye(matrix.shape[1]), atol=1e-8)


def test_aggregate_mean_median_match_pandas(fields):
    rng = np.random.default_rng(0)
    adata = fields.copy()
    adata.obsm["X_emb"] = rng.normal(size=(adata.n_obs, 4)).astype(np.float32)
    for method in ("mean", "median"):
        wells = cpe.pp.aggregate(adata, "Metadata_Well", obsm_key="X_emb", method=method)
        expected = pd.DataFrame(adata.obsm["X_emb"]).groupby(adata.obs["Metadata_Well"].to_numpy()).agg(method)
        np.testing.assert_allclose(wells.X, expected.loc[wells.obs_names].to_numpy(), rtol=1e-6)
    assert (wells.obs["n_rows"] == 2).all()
    assert "Metadata_Site" not in wells.obs  # varies within a well
    assert wells.obs["Metadata_Plate"].notna().all()
    assert "X_emb" in adata.obsm
    assert adata.n_obs == fields.n_obs


def test_aggregate_center_scale_and_tvn_simulated(fields):
    rng = np.random.default_rng(1)
    adata = fields.copy()
    adata.obsm["X_emb"] = (
        rng.normal(size=(adata.n_obs, 3)) + (adata.obs["Metadata_Plate"].cat.codes.to_numpy()[:, None])
    )
    means = cpe.pp.aggregate(adata, "Metadata_Well", obsm_key="X_emb")
    is_control = means.obs["Metadata_is_negcon"].to_numpy()
    plates = means.obs["Metadata_Plate"].astype(str).to_numpy()
    centred = cpe.pp.aggregate(
        adata,
        "Metadata_Well",
        obsm_key="X_emb",
        normalize="center_scale",
        control_key="Metadata_is_negcon",
        plate_key="Metadata_Plate",
    )
    np.testing.assert_allclose(
        centred.X, brute_force_center_scale(means.X.astype(float), plates, is_control), rtol=1e-5
    )


def test_tvn_matches_sklearn_pca_whitening_on_bbbc021():
    wells = cpe.datasets.bbbc021()
    matrix = np.log1p(np.abs(wells.X[:, :12].astype(np.float64)))
    batches = wells.obs["Metadata_Batch"].astype(str).to_numpy()
    is_control = wells.obs["Metadata_is_negcon"].to_numpy().astype(bool)
    keep = np.isin(batches, ["Week1", "Week2", "Week3"])
    whitened = typical_variation_normalize(matrix[keep], batches[keep], is_control[keep], eps=0.0)
    assert_same_whitening(whitened, matrix[keep], batches[keep], is_control[keep])
    plates = wells.obs["Metadata_Plate"].astype(str).to_numpy()
    per_plate = cpe.pp.aggregate(wells, "Metadata_Plate", method="median")
    expected = pd.DataFrame(wells.X.astype(np.float64)).groupby(plates).median().loc[per_plate.obs_names]
    np.testing.assert_allclose(per_plate.X, expected.to_numpy(), rtol=1e-5)
    batch_of_plate = dict(zip(plates, batches, strict=True))
    assert per_plate.obs["Metadata_Batch"].astype(str).tolist() == [batch_of_plate[p] for p in expected.index]
    np.testing.assert_allclose(
        center_scale_to_controls(matrix, plates, is_control), brute_force_center_scale(matrix, plates, is_control)
    )


def test_aggregate_tvn_wrapper_per_batch(fields):
    rng = np.random.default_rng(2)
    adata = fields.copy()
    adata.obsm["X_emb"] = rng.normal(size=(adata.n_obs, 2))
    adata.obs["well_batch"] = adata.obs["Metadata_Well"]  # one batch per well is too few controls
    tvn = cpe.pp.aggregate(
        adata, "Metadata_Well", obsm_key="X_emb", normalize="tvn", control_key="Metadata_is_negcon", eps=0.0
    )
    means = cpe.pp.aggregate(adata, "Metadata_Well", obsm_key="X_emb")
    everything = np.zeros(means.n_obs, dtype=int)
    assert_same_whitening(
        tvn.X.astype(float), means.X.astype(float), everything, means.obs["Metadata_is_negcon"].to_numpy()
    )
    with pytest.raises(ValueError, match="fewer than 2 control"):
        cpe.pp.aggregate(
            adata,
            "Metadata_Well",
            obsm_key="X_emb",
            normalize="tvn",
            control_key="Metadata_is_negcon",
            batch_key="well_batch",
        )
    with pytest.raises(ValueError, match="control_key"):
        cpe.pp.aggregate(adata, "Metadata_Well", obsm_key="X_emb", normalize="tvn")
    adata.obsm["X_emb"][0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        cpe.pp.aggregate(adata, "Metadata_Well", obsm_key="X_emb")


# --------------------------------------------------------------------------- handcrafted baseline


def test_handcrafted_features_match_masks(fields):
    adata = fields[:4].copy()
    cpe.tl.handcrafted_features(adata)
    features = adata.obsm["X_handcrafted"]
    names = adata.uns["X_handcrafted"]["feature_names"]
    assert features.shape == (4, len(names))
    np.testing.assert_array_equal(features[:, 0], adata.obs["Metadata_n_cells"])
    path = adata.uns["image_store"]["path"]
    nuclei = cpe.io.read_store_images(path, [0], "masks/nuclei")[0]
    image = cpe.io.read_store_images(path, [0])[0]
    labels = np.unique(nuclei[nuclei > 0])
    area = np.mean([(nuclei == label).sum() for label in labels])
    dna = np.mean([image[0][nuclei == label].mean() for label in labels])
    assert features[0, names.index("Nuclei_AreaShape_area")] == pytest.approx(area)
    assert features[0, names.index("Nuclei_Intensity_MeanIntensity_DNA")] == pytest.approx(dna, rel=1e-5)


def test_handcrafted_field_features_with_label_gaps_and_empty_cytoplasm():
    image = np.random.default_rng(0).integers(0, 255, size=(2, 12, 12)).astype(np.uint8)
    nuclei = np.zeros((12, 12), dtype=np.int32)
    cells = np.zeros_like(nuclei)
    cells[1:6, 1:6], nuclei[2:4, 2:4] = 2, 2  # numbers 0, 1, 3, 4 unused below 5
    cells[7:10, 7:10] = nuclei[7:10, 7:10] = 5  # nucleus fills the cell: no cytoplasm
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        features = field_features(image, nuclei, cells)
    names = feature_names(["A", "B"])
    assert np.isfinite(features).all()
    assert features[0] == 2
    cytoplasm_a = image[0][(cells == 2) & (nuclei == 0)].mean()
    assert features[names.index("Cytoplasm_Intensity_MeanIntensity_A")] == pytest.approx((cytoplasm_a + 0.0) / 2)
    nucleus_b = (image[1][nuclei == 2].mean() + image[1][nuclei == 5].mean()) / 2
    assert features[names.index("Nuclei_Intensity_MeanIntensity_B")] == pytest.approx(nucleus_b)


def _haralick_by_pixel_pairs(grey: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Contrast, correlation, ASM and homogeneity of the pixels in ``mask``, pairs counted one at a time.

    ``grey`` holds levels ``1..TEXTURE_LEVELS``. Each direction (right, up-right, up, up-left; both orders of a pair)
    gives one normalised co-occurrence matrix; the properties are averaged over the directions with a pair.
    """
    properties = []
    for step_row, step_col in [(0, 1), (-1, 1), (-1, 0), (-1, -1)]:
        counts = np.zeros((TEXTURE_LEVELS, TEXTURE_LEVELS))
        for row, col in zip(*np.nonzero(mask), strict=True):
            other_row, other_col = row + step_row, col + step_col
            if 0 <= other_row < mask.shape[0] and 0 <= other_col < mask.shape[1] and mask[other_row, other_col]:
                a, b = grey[row, col] - 1, grey[other_row, other_col] - 1
                counts[a, b] += 1
                counts[b, a] += 1
        if counts.sum() == 0:
            continue
        p = counts / counts.sum()
        i, j = np.indices(p.shape)
        mean_i, mean_j = (i * p).sum(), (j * p).sum()
        spread = np.sqrt(((i - mean_i) ** 2 * p).sum() * ((j - mean_j) ** 2 * p).sum())
        correlation = ((i - mean_i) * (j - mean_j) * p).sum() / spread if spread > 0 else 1.0
        properties.append([(p * (i - j) ** 2).sum(), correlation, (p**2).sum(), (p / (1 + (i - j) ** 2)).sum()])
    return np.mean(properties, axis=0)


def test_handcrafted_texture_and_correlation_match_pixel_by_pixel_computation():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(2, 14, 14)).astype(np.uint8)
    image[1, 8:13, 2:12] = 200  # uniform in channel B over part of cell 2
    cells = np.zeros((14, 14), dtype=np.int32)
    cells[1:7, 1:9], cells[3:6, 9:13] = 1, 1  # an L-shaped cell ...
    cells[7:13, 1:13] = cells[6, 9:13] = 2  # ... around part of a second one, which must not enter cell 1's counts
    nuclei = np.zeros_like(cells)
    nuclei[2:5, 2:6], nuclei[9:11, 4:7] = 1, 2
    names = feature_names(["A", "B"])
    features = field_features(image, nuclei, cells)
    grey = 1 + image.astype(np.int64) * TEXTURE_LEVELS // 256
    for compartment, labels in [("Nuclei", nuclei), ("Cells", cells)]:
        for channel, name in enumerate("AB"):
            expected = np.mean([_haralick_by_pixel_pairs(grey[channel], labels == label) for label in (1, 2)], axis=0)
            measured = [
                features[names.index(f"{compartment}_Texture_{prop}_{name}_1")]
                for prop in ("Contrast", "Correlation", "AngularSecondMoment", "InverseDifferenceMoment")
            ]
            np.testing.assert_allclose(measured, expected, rtol=1e-10, err_msg=f"{compartment} {name}")
    correlations = [np.corrcoef(image[0][cells == label], image[1][cells == label])[0, 1] for label in (1, 2)]
    assert features[names.index("Cells_Correlation_Correlation_A_B")] == pytest.approx(np.mean(correlations))


def test_handcrafted_texture_of_single_pixels_and_uniform_channels():
    image = np.zeros((2, 8, 8), dtype=np.uint8)
    image[0] = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4  # channel B stays 0
    cells = np.zeros((8, 8), dtype=np.int32)
    cells[4:7, 4:7] = 1
    nuclei = np.zeros_like(cells)
    nuclei[5, 5] = 1  # a one-pixel nucleus: no pixel pair in any direction
    names = feature_names(["A", "B"])
    features = dict(zip(names, field_features(image, nuclei, cells), strict=True))
    for channel in "AB":
        for prop in ("Contrast", "Correlation", "AngularSecondMoment", "InverseDifferenceMoment"):
            assert features[f"Nuclei_Texture_{prop}_{channel}_1"] == 0.0
    # A uniform channel: no contrast, one grey level (ASM and homogeneity 1, correlation 1 by scikit-image's
    # convention), and no intensity correlation with another channel (0 by convention).
    assert features["Cells_Texture_Contrast_B_1"] == 0.0
    assert features["Cells_Texture_AngularSecondMoment_B_1"] == 1.0
    assert features["Cells_Texture_InverseDifferenceMoment_B_1"] == 1.0
    assert features["Cells_Texture_Correlation_B_1"] == 1.0
    assert features["Cells_Correlation_Correlation_A_B"] == 0.0


# --------------------------------------------------------------------------- real images end to end


@pytest.mark.skipif(
    not REAL_IMAGES.exists(), reason="the real microscopy fields live in ../shared/data/images (not bundled)"
)
def test_real_fields_load_tile_embed(tmp_path):
    fields = cpe.io.read_images(REAL_IMAGES / "NF1_cellpainting_data_shrunken", plate="Plate_2")
    tiles = cpe.io.build_image_store(fields, tmp_path / "nf1.h5", tile_size=224)
    assert tiles.n_obs == 5 * (904 // 224) * (1224 // 224)
    # The five wells carry no treatment labels here: two pseudo-perturbations exercise cross-well sampling.
    tiles.obs["group"] = np.where(tiles.obs["Metadata_Well"].isin(["B7", "D6"]), "g1", "g2")
    cpe.tl.cwamsn(
        tiles,
        "group",
        "Metadata_Well",
        max_epochs=1,
        batch_size=4,
        steps_per_epoch=1,
        model_kwargs=TINY,
        **QUIET,
    )
    assert tiles.obsm["X_cwamsn"].shape == (tiles.n_obs, 16)
    assert np.isfinite(tiles.obsm["X_cwamsn"]).all()
    wells = cpe.pp.aggregate(tiles, "Metadata_Well", obsm_key="X_cwamsn")
    assert wells.n_obs == 5


def test_bundled_real_field_tiles_embed_with_a_model_trained_on_simulated_images(fields, tmp_path):
    real = cpe.io.read_images(
        cpe.datasets.example_images(), plate="BR00143976", channel_names=cpe.datasets.EXAMPLE_CHANNELS
    )
    tiles = cpe.io.build_image_store(
        real, tmp_path / "real.h5", tile_size=112, channels=["DNA", "ER", "RNA", "AGP", "Mito"]
    )
    assert tiles.n_obs == 4
    model = cpe.model.CWAMSN(setup(fields.copy()), **TINY)
    model.train(max_epochs=1, batch_size=8, steps_per_epoch=1, **QUIET)
    latent = model.get_latent_representation(tiles)
    assert latent.shape == (4, 16)
    assert np.isfinite(latent).all()
    assert np.unique(latent.round(5), axis=0).shape[0] == 4  # four different tiles, four different embeddings
    three_channels = cpe.io.build_image_store(real, tmp_path / "three.h5", channels=["DNA", "ER", "RNA"])
    with pytest.raises(ValueError, match="3 channels"):
        model.get_latent_representation(three_channels)


def test_training_is_seeded_and_leaves_global_rng_alone(fields):
    latents = []
    for _ in range(2):
        state = torch.random.get_rng_state()
        model = cpe.model.CWAMSN(setup(fields.copy()), **TINY, seed=7)
        model.train(max_epochs=1, batch_size=4, steps_per_epoch=1, **QUIET)
        assert torch.equal(torch.random.get_rng_state(), state)
        latents.append(model.get_latent_representation())
    np.testing.assert_array_equal(latents[0], latents[1])


def test_load_reads_the_images_of_the_given_adata(fields, tmp_path):
    """A loaded model set up on new data reads that data's image store, not the store it was trained on."""
    model = cpe.model.CWAMSN(setup(fields.copy()), **TINY)
    model.save(tmp_path / "model")
    brighter = with_store(fields, tmp_path / "brighter.h5", lambda images: np.sqrt(images.astype(np.float32)))
    loaded = cpe.model.CWAMSN.load(tmp_path / "model", brighter)
    assert loaded.registry_["setup_args"]["image_store"] == str(tmp_path / "brighter.h5")
    np.testing.assert_array_equal(loaded.get_latent_representation(), model.get_latent_representation(brighter))
    unrecorded = fields.copy()
    del unrecorded.uns["image_store"]
    with pytest.warns(UserWarning, match="training store"):
        cpe.model.CWAMSN.load(tmp_path / "model", unrecorded)
    with pytest.raises(FileNotFoundError, match="No saved CWAMSN model"):
        cpe.model.CWAMSN.load(tmp_path / "missing", fields.copy())
    with pytest.raises(ValueError, match="save_anndata=True"):
        cpe.model.CWAMSN.load(tmp_path / "model")


def test_interrupted_training_leaves_the_model_as_it_was(fields, monkeypatch):
    from cpembed.module import MSNTrainingStep

    model = cpe.model.CWAMSN(setup(fields.copy()), **TINY)
    before = {name: value.clone() for name, value in model.module.state_dict().items()}
    step = MSNTrainingStep.__call__
    calls = []

    def interrupted_step(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return step(self, *args, **kwargs)

    monkeypatch.setattr(MSNTrainingStep, "__call__", interrupted_step)
    with pytest.raises(KeyboardInterrupt):
        model.train(max_epochs=2, batch_size=8, steps_per_epoch=2, **QUIET)
    after = model.module.state_dict()
    for name, value in before.items():
        torch.testing.assert_close(after[name], value, rtol=0, atol=0)
    assert model.history_ == {}
    assert not model.is_trained_


def test_interrupted_save_keeps_the_earlier_file(fields, tmp_path, monkeypatch):
    model = cpe.model.CWAMSN(setup(fields.copy()), **TINY)
    model.save(tmp_path / "model")
    written = (tmp_path / "model" / "model.pt").read_bytes()

    def interrupted_save(state, path):
        Path(path).write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        model.save(tmp_path / "model", overwrite=True)
    assert (tmp_path / "model" / "model.pt").read_bytes() == written
    assert [path.name for path in tmp_path.iterdir()] == ["model"]


def test_setup_names_an_image_store_that_is_not_one(fields, tmp_path):
    not_a_store = tmp_path / "profiles.csv"
    not_a_store.write_text("Metadata_Plate,feature\np1,1.0\n")
    with pytest.raises(ValueError, match=rf"Cannot read {not_a_store} as an HDF5 image store"):
        cpe.model.CWAMSN.setup_anndata(fields.copy(), **KEYS, image_store=str(not_a_store))
