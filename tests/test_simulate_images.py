import h5py
import numpy as np
import pandas as pd
import pytest

import cpembed as cpe
from cpembed.io import read_store_images


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    path = tmp_path_factory.mktemp("sim") / "sim.h5"
    return cpe.datasets.simulate_images(path, n_moas=3, perturbations_per_moa=2, image_size=48, seed=3)


def test_layout_and_ground_truth(simulated):
    obs = simulated.obs
    assert simulated.n_obs == 4 * (6 + 2) * 2  # plates x (compounds + control wells) x sites
    for column in ("Metadata_Batch", "Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_Perturbation"):
        assert column in obs
    per_plate = obs.groupby("Metadata_Perturbation", observed=True)["Metadata_Plate"].nunique()
    assert (per_plate == 4).all()  # every compound (and DMSO) on every plate
    assert obs.groupby("Metadata_Plate", observed=True)["Metadata_Batch"].nunique().eq(1).all()
    assert obs["Metadata_is_negcon"].sum() == 4 * 2 * 2
    moa_of = obs.drop_duplicates("Metadata_Perturbation").set_index("Metadata_Perturbation")["Metadata_moa"]
    assert moa_of["DMSO"] == "DMSO"
    assert moa_of.nunique() == 4


def test_store_and_masks_agree(simulated):
    path = simulated.uns["image_store"]["path"]
    with h5py.File(path) as file:
        assert file["images"].shape == (simulated.n_obs, 5, 48, 48)
        assert list(file.attrs["channels"]) == ["DNA", "ER", "RNA", "AGP", "Mito"]
    rows = [0, 5, 17]
    nuclei = read_store_images(path, rows, "masks/nuclei")
    cells = read_store_images(path, rows, "masks/cells")
    for n, c, count in zip(nuclei, cells, simulated.obs["Metadata_n_cells"].iloc[rows], strict=True):
        assert n.max() == count
        assert (c[n > 0] == n[n > 0]).all()  # every nucleus lies in its own cell
    images = read_store_images(path, rows)
    assert images.dtype == np.uint8
    for _, plate in simulated.obs.groupby("Metadata_Plate", observed=True):
        pixels = read_store_images(path, plate["image_index"]).transpose(1, 0, 2, 3).reshape(5, -1)
        assert (pixels.min(axis=1) == 0).all()  # each channel scaled once per plate, over the full range
        assert (pixels.max(axis=1) == 255).all()


def test_seed_reproducible(tmp_path):
    a = cpe.datasets.simulate_images(tmp_path / "a.h5", 2, 1, n_plates=2, image_size=32, seed=1)
    b = cpe.datasets.simulate_images(tmp_path / "b.h5", 2, 1, n_plates=2, image_size=32, seed=1)
    np.testing.assert_array_equal(read_store_images(tmp_path / "a.h5", [3]), read_store_images(tmp_path / "b.h5", [3]))
    assert a.obs.equals(b.obs)


def test_cell_count_follows_the_perturbation_effect(tmp_path):
    sim = cpe.datasets.simulate_images(tmp_path / "s.h5", 4, 2, n_plates=2, n_sites=4, image_size=64, seed=0)
    effects = sim.uns["simulation"]["effects"].set_index("perturbation")["cell_count"]
    counts = sim.obs.groupby("Metadata_Perturbation", observed=True)["Metadata_n_cells"].mean()
    # placement caps counts when nuclei grow, so the relation is strong but not perfect
    assert np.corrcoef(effects[counts.index], np.log(counts))[0, 1] > 0.5


def test_plate_effect_changes_background_between_plates(tmp_path):
    def background_spread(plate_effect):
        sim = cpe.datasets.simulate_images(
            tmp_path / f"p{plate_effect}.h5", 1, 1, n_plates=4, image_size=48, plate_effect=plate_effect, seed=2
        )
        path = sim.uns["image_store"]["path"]
        images = read_store_images(path, sim.obs["image_index"]).astype(float)
        cells = read_store_images(path, sim.obs["image_index"], "masks/cells")
        pairs = zip(images, cells, strict=True)
        background = np.array([[im[ch][c == 0].mean() for ch in range(5)] for im, c in pairs])
        per_plate = [
            background[(sim.obs["Metadata_Plate"] == p).to_numpy()].mean(0)
            for p in sim.obs["Metadata_Plate"].cat.categories
        ]
        return np.std(per_plate, axis=0).mean()

    assert background_spread(2.0) > 2 * background_spread(0.0)


def dna_in_nuclei_by_compound(sim) -> pd.Series:
    """Mean DNA-stain value inside nuclei per compound, over DMSO's on the same plate, averaged over plates (log)."""
    path = sim.uns["image_store"]["path"]
    obs = sim.obs.copy()
    images = read_store_images(path, obs["image_index"])[:, 0].astype(float)
    nuclei = read_store_images(path, obs["image_index"], "masks/nuclei") > 0
    obs["dna"] = [image[mask].mean() for image, mask in zip(images, nuclei, strict=True)]
    means = obs.groupby(["Metadata_Plate", "Metadata_Perturbation"], observed=True)["dna"].mean().unstack()
    return np.log(means.div(means["DMSO"], axis=0)).mean().drop("DMSO")


def test_plate_scale_keeps_intensity_phenotypes_that_field_scale_erases(tmp_path):
    kwargs = {"n_plates": 2, "n_sites": 3, "image_size": 48, "plate_effect": 0.0, "seed": 4}
    plate = cpe.datasets.simulate_images(tmp_path / "plate.h5", 4, 3, **kwargs)
    field = cpe.datasets.simulate_images(tmp_path / "field.h5", 4, 3, intensity_scale="field", **kwargs)
    effects = plate.uns["simulation"]["effects"].set_index("perturbation")["dna_intensity"].drop("DMSO")
    with h5py.File(tmp_path / "plate.h5") as file:
        assert file.attrs["intensity_scale"] == "plate"
    measured_plate, measured_field = dna_in_nuclei_by_compound(plate), dna_in_nuclei_by_compound(field)
    assert np.corrcoef(effects[measured_plate.index], measured_plate)[0, 1] > 0.95  # measured: 0.995
    assert abs(np.corrcoef(effects[measured_field.index], measured_field)[0, 1]) < 0.5  # measured: 0.001
    with pytest.raises(ValueError, match="intensity_scale"):
        cpe.datasets.simulate_images(tmp_path / "x.h5", 1, 1, intensity_scale="dataset")
