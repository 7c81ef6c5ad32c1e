"""cpe.tl.segment_cells: against CellProfiler's masks of a real field, and against the simulator's true masks."""

from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
from scipy import ndimage

import cpembed as cpe
from cpembed.tl._segmentation import segment_field

NF1 = Path(__file__).parent / "data" / "nf1_segmentation"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2 * (a & b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def nf1_store(tmp_path_factory):
    fields = cpe.io.read_images(NF1, pattern="well_site_channel", plate="NF1_plate_2")
    return cpe.io.build_image_store(fields, tmp_path_factory.mktemp("nf1") / "store.h5")


@pytest.fixture
def simulated(tmp_path):
    return cpe.datasets.simulate_images(tmp_path / "sim.h5", 2, 2, n_plates=1, n_sites=2, image_size=64, seed=3)


def test_nuclei_and_cells_match_cellprofiler_on_a_real_field(nf1_store):
    cpe.tl.segment_cells(nf1_store, nucleus_channel="DAPI", cell_channels=["RFP"], nucleus_diameter=(20, 100))
    path = nf1_store.uns["image_store"]["path"]
    nuclei = cpe.io.read_store_images(path, [0], "masks/nuclei")[0]
    cells = cpe.io.read_store_images(path, [0], "masks/cells")[0]
    cellprofiler_nuclei = tifffile.imread(NF1 / "D6_01_1_2_DAPI_001_MaskNuclei.tiff")
    cellprofiler_cells = tifffile.imread(NF1 / "D6_01_3_2_RFP_001_MaskCells.tiff")
    # CellProfiler's binary nucleus mask holds 27 separate objects (none touching the border); two touching nuclei
    # make one of them, which segment_cells splits.
    cellprofiler_objects, n_objects = ndimage.label(cellprofiler_nuclei)
    assert n_objects == 27
    assert set(np.unique(cellprofiler_objects[nuclei > 0])) == set(range(n_objects + 1))  # every object found
    assert all(cellprofiler_nuclei[nuclei == label].any() for label in range(1, nuclei.max() + 1))  # none spurious
    assert 27 <= nuclei.max() <= 28
    assert dice(nuclei, cellprofiler_nuclei) > 0.95
    # Cell borders are where segmentation methods differ most (CellProfiler propagated; this floods by intensity).
    assert dice(cells, cellprofiler_cells) > 0.65
    for label in range(1, int(nuclei.max()) + 1):
        assert (cells[nuclei == label] == label).all()


def test_handcrafted_features_measure_a_segmented_real_field(nf1_store):
    cpe.tl.segment_cells(
        nf1_store, nucleus_channel="DAPI", nucleus_diameter=(20, 100), key_added="segmentation", overwrite=True
    )
    measured = cpe.tl.handcrafted_features(nf1_store, masks="segmentation", copy=True)
    features = measured.obsm["X_handcrafted"]
    names = measured.uns["X_handcrafted"]["feature_names"]
    assert np.isfinite(features).all()
    nuclei = cpe.io.read_store_images(nf1_store.uns["image_store"]["path"], [0], "segmentation/nuclei")[0]
    assert features[0, names.index("Image_Count_Cells")] == nuclei.max()
    area = np.bincount(nuclei.ravel())[1:].mean()
    assert features[0, names.index("Nuclei_AreaShape_area")] == pytest.approx(area)


def test_segmentation_of_simulated_fields_is_close_to_their_true_masks(simulated):
    path = simulated.uns["image_store"]["path"]
    rows = simulated.obs["image_index"].to_numpy()
    true_nuclei = cpe.io.read_store_images(path, rows, "masks/nuclei")
    obs, uns = simulated.obs.copy(), dict(simulated.uns)
    cpe.tl.segment_cells(simulated, nucleus_diameter=(3, 15), exclude_border=False, key_added="segmentation")
    nuclei = cpe.io.read_store_images(path, rows, "segmentation/nuclei")
    cells = cpe.io.read_store_images(path, rows, "segmentation/cells")
    np.testing.assert_array_equal(cpe.io.read_store_images(path, rows, "masks/nuclei"), true_nuclei)
    assert simulated.obs.equals(obs)
    assert simulated.uns.keys() == uns.keys()
    counts, true_counts = nuclei.max(axis=(1, 2)), true_nuclei.max(axis=(1, 2))
    assert abs(counts.mean() - true_counts.mean()) < 0.15 * true_counts.mean()
    assert np.corrcoef(counts, true_counts)[0, 1] > 0.8
    assert dice(nuclei, true_nuclei) > 0.7
    assert dice(cells, cpe.io.read_store_images(path, rows, "masks/cells")) > 0.7
    with h5py.File(path) as file:
        assert "nucleus_diameter=(3, 15)" in file["segmentation"].attrs["segmentation"]


def test_declumping_splits_two_touching_nuclei_and_the_size_range_drops_debris():
    yy, xx = np.mgrid[0:80, 0:80]
    dna = np.zeros((80, 80))
    for cy, cx in [(40, 30), (40, 48)]:  # two discs of diameter 20 whose rims overlap
        dna[(yy - cy) ** 2 + (xx - cx) ** 2 <= 100] = 200
    dna[10:12, 70:72] = 200  # 4-pixel debris
    body = dna + 20.0 * ((yy - 40) ** 2 + (xx - 39) ** 2 <= 400)
    nuclei, cells = segment_field(np.stack([dna, body]), 0, [1], (10, 40), exclude_border=False)
    assert nuclei.max() == 2
    assert nuclei[40, 30] != nuclei[40, 48]
    assert nuclei[10, 70] == 0
    assert set(np.unique(cells)) == {0, 1, 2}
    assert (cells[nuclei > 0] == nuclei[nuclei > 0]).all()


def test_a_discarded_border_nucleus_keeps_its_cytoplasm_from_its_neighbour():
    dna, body = np.zeros((60, 60)), np.zeros((60, 60))
    body[0:40, 10:50] = 50  # one sheet of cytoplasm over both cells
    dna[0:12, 24:36] = 200  # nucleus cut by the border
    dna[26:38, 24:36] = 200
    image = np.stack([dna, body + dna])
    nuclei, cells = segment_field(image, 0, [1], (6, 30))
    assert nuclei.max() == 1
    assert nuclei[32, 30] == 1
    assert cells[2, 30] == 0  # the border cell is dropped, not absorbed by the kept one
    nuclei, cells = segment_field(image, 0, [1], (6, 30), exclude_border=False)
    assert nuclei.max() == 2
    assert cells[2, 30] == nuclei[5, 30]
    assert segment_field(np.zeros((2, 60, 60)), 0, [1], (6, 30))[0].max() == 0


def test_segment_cells_rejects_bad_settings_and_keeps_existing_masks(simulated):
    with pytest.raises(KeyError, match="Hoechst"):
        cpe.tl.segment_cells(simulated, nucleus_channel="Hoechst")
    with pytest.raises(KeyError, match="Brightfield"):
        cpe.tl.segment_cells(simulated, cell_channels=["AGP", "Brightfield"])
    with pytest.raises(ValueError, match="threshold"):
        cpe.tl.segment_cells(simulated, threshold="triangle")
    with pytest.raises(ValueError, match="nucleus_diameter"):
        cpe.tl.segment_cells(simulated, nucleus_diameter=(20, 10))
    with pytest.raises(FileExistsError, match="'masks'"):
        cpe.tl.segment_cells(simulated)
    with pytest.raises(ValueError, match=r"'images' .* not a group of masks"):
        cpe.tl.segment_cells(simulated, key_added="images", overwrite=True)
    assert cpe.io.read_store_images(simulated.uns["image_store"]["path"], [0]).any()
    with pytest.raises(KeyError, match="segment_cells"):
        cpe.tl.handcrafted_features(simulated, masks="segmentation")
    assert "X_handcrafted" not in simulated.obsm
