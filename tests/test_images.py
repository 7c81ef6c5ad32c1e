from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import tifffile

import cpembed as cpe
from cpembed.io._image_store import IntensityHistogram, to_uint8

REAL_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "images"
needs_real_images = pytest.mark.skipif(
    not REAL_IMAGES.exists(), reason="the real microscopy fields live in ../shared/data/images (not bundled)"
)


def write_fields(folder: Path, rng) -> pd.DataFrame:
    """Two fields x two channels of 16-bit TIFFs (LZW) and the matching LoadData CSV."""
    rows = []
    for well in ("A01", "B02"):
        row = {"Metadata_Plate": "P1", "Metadata_Well": well, "Metadata_Site": 1}
        for channel in ("DNA", "Mito"):
            name = f"{well}_{channel}.tif"
            tifffile.imwrite(folder / name, rng.integers(0, 4000, (40, 48), dtype=np.uint16), compression="lzw")
            row |= {f"FileName_Orig{channel}": name, f"PathName_Orig{channel}": str(folder)}
        rows.append(row)
    table = pd.DataFrame(rows)
    table.to_csv(folder / "load_data.csv", index=False)
    return table


def brute_force_uint8(channel: np.ndarray, percentile: float) -> np.ndarray:
    flat = np.sort(channel.astype(np.float64).ravel())
    high = np.percentile(flat, percentile)
    low = flat[0]
    return np.array([[round(255 * (min(v, high) - low) / (high - low)) for v in row] for row in channel])


def test_to_uint8_clips_top_percentile_per_channel():
    rng = np.random.default_rng(0)
    image = rng.integers(100, 1000, (2, 30, 30)).astype(np.uint16)
    image[0, 0, 0] = 65000  # one hot pixel is clipped, not allowed to darken the channel
    converted = to_uint8(image, 99.0)
    assert converted.dtype == np.uint8
    for channel in range(2):
        np.testing.assert_array_equal(converted[channel], brute_force_uint8(image[channel], 99.0))
    assert converted[0, 0, 0] == 255
    assert converted[0].mean() > 60  # without clipping the hot pixel would squash everything near 0


def test_read_loaddata_csv_and_store_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    table = write_fields(tmp_path, rng)
    fields = cpe.io.read_images(tmp_path / "load_data.csv")
    assert fields.n_obs == 2
    assert list(fields.obs["Metadata_Well"]) == ["A01", "B02"]
    store = cpe.io.build_image_store(fields, tmp_path / "store.h5", clip_percentile=99.9)
    assert store.uns["image_store"]["channels"] == ["DNA", "Mito"]
    with h5py.File(tmp_path / "store.h5") as file:
        assert file["images"].shape == (2, 2, 40, 48)
        assert file["images"].chunks == (1, 2, 40, 48)
        stored = file["images"][1]
        assert file.attrs["intensity_scale"] == "plate"
    raw = [
        np.stack([tifffile.imread(tmp_path / table.loc[row, f"FileName_Orig{c}"]) for c in ("DNA", "Mito")])
        for row in (0, 1)
    ]
    # Both fields lie on plate P1, so both are scaled with the limits of all their pixels.
    pixels = np.concatenate([field.reshape(2, -1) for field in raw], axis=1)
    limits = pixels.min(axis=1), np.percentile(pixels, 99.9, axis=1, method="inverted_cdf")
    np.testing.assert_array_equal(stored, to_uint8(raw[1], limits=limits))
    np.testing.assert_array_equal(cpe.io.read_store_images(tmp_path / "store.h5", [1, 0])[0], stored)
    with pytest.raises(FileExistsError):
        cpe.io.build_image_store(fields, tmp_path / "store.h5")
    cpe.io.build_image_store(fields, tmp_path / "fields.h5", clip_percentile=99.9, intensity_scale="field")
    np.testing.assert_array_equal(cpe.io.read_store_images(tmp_path / "fields.h5", [1])[0], to_uint8(raw[1], 99.9))


def test_intensity_histogram_limits_equal_percentiles_of_all_pixels():
    rng = np.random.default_rng(0)
    images = [rng.integers(200, 9000, (3, 17, 23), dtype=np.uint16) for _ in range(4)]
    images[2][1, 0, 0] = 60000
    histogram = IntensityHistogram()
    for image in images:
        histogram.add(image)
    pixels = np.concatenate([image.reshape(3, -1) for image in images], axis=1)
    for percentile in (50.0, 99.0, 99.997, 100.0):
        low, high = histogram.limits(percentile)
        np.testing.assert_array_equal(low, pixels.min(axis=1))
        np.testing.assert_array_equal(high, np.percentile(pixels, percentile, axis=1, method="inverted_cdf"))
    with pytest.raises(TypeError, match="uint8 or uint16"):
        histogram.add(images[0].astype(np.float32))
    with pytest.raises(ValueError, match="channels"):
        histogram.add(images[0][:2])
    with pytest.raises(ValueError, match="No image"):
        IntensityHistogram().limits()


def test_plate_scale_keeps_a_dimmer_field_dimmer(tmp_path):
    rng = np.random.default_rng(0)
    bright = rng.integers(1000, 4000, (30, 30), dtype=np.uint16)
    rows = []
    for well, scale in (("A01", 1.0), ("A02", 0.5)):
        tifffile.imwrite(tmp_path / f"{well}.tif", (bright * scale).astype(np.uint16))
        rows.append(
            {
                "Metadata_Plate": "P",
                "Metadata_Well": well,
                "Metadata_Site": 1,
                "FileName_OrigDNA": f"{well}.tif",
                "PathName_OrigDNA": str(tmp_path),
            }
        )
    pd.DataFrame(rows).to_csv(tmp_path / "load.csv", index=False)
    fields = cpe.io.read_images(tmp_path / "load.csv")
    for scale, expected_ratio in (("plate", 0.5), ("field", 1.0)):
        cpe.io.build_image_store(fields, tmp_path / f"{scale}.h5", intensity_scale=scale, clip_percentile=100.0)
        stored = cpe.io.read_store_images(tmp_path / f"{scale}.h5", [0, 1]).astype(float)
        ratio = (stored[1] - stored[1].min()).mean() / (stored[0] - stored[0].min()).mean()
        assert ratio == pytest.approx(expected_ratio, abs=0.03)


def test_tiles_cover_the_centred_grid(tmp_path):
    write_fields(tmp_path, np.random.default_rng(1))
    fields = cpe.io.read_images(tmp_path / "load_data.csv")
    tiles = cpe.io.build_image_store(fields, tmp_path / "tiles.h5", tile_size=16, channels=["Mito"])
    assert tiles.n_obs == 2 * (40 // 16) * (48 // 16)
    assert list(tiles.obs["image_index"]) == list(range(tiles.n_obs))
    full = cpe.io.build_image_store(fields, tmp_path / "full.h5", channels=["Mito"])
    field = cpe.io.read_store_images(tmp_path / "full.h5", [0])[0]
    first_tile = cpe.io.read_store_images(tmp_path / "tiles.h5", [0])[0]
    np.testing.assert_array_equal(first_tile, field[:, 4:20, 0:16])  # grid centred: (40 - 32) / 2 = 4 rows off
    assert full.obs["Metadata_Field"].tolist() == fields.obs_names.tolist()


def test_bad_inputs_raise(tmp_path):
    with pytest.raises(FileNotFoundError):
        cpe.io.read_images(tmp_path / "missing")
    pd.DataFrame({"Metadata_Plate": ["P"], "Metadata_Well": ["A01"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(KeyError, match="Metadata_Site"):
        cpe.io.read_images(tmp_path / "bad.csv")
    write_fields(tmp_path, np.random.default_rng(0))
    fields = cpe.io.read_images(tmp_path / "load_data.csv")
    with pytest.raises(KeyError, match="Actin"):
        cpe.io.build_image_store(fields, tmp_path / "s.h5", channels=["Actin"])
    with pytest.raises(ValueError, match="intensity_scale"):
        cpe.io.build_image_store(fields, tmp_path / "s.h5", intensity_scale="dataset")
    with pytest.raises(KeyError, match="Metadata_Plate"):
        cpe.io.build_image_store(ad.AnnData(obs=fields.obs.drop(columns="Metadata_Plate")), tmp_path / "s.h5")


def test_folder_with_custom_pattern(tmp_path):
    rng = np.random.default_rng(0)
    for site in (1, 2):
        for channel in ("DNA", "ER"):
            tifffile.imwrite(
                tmp_path / f"plateX-C05-s{site}-{channel}.tif", rng.integers(0, 9, (8, 8), dtype=np.uint16)
            )
    fields = cpe.io.read_images(tmp_path, r"(?P<plate>plate\w)-(?P<well>\w\d+)-s(?P<site>\d)-(?P<channel>\w+)\.tif")
    assert fields.n_obs == 2
    assert set(fields.obs["Metadata_Plate"]) == {"plateX"}
    assert {"FileName_OrigDNA", "FileName_OrigER"} <= set(fields.obs)


@needs_real_images
def test_read_phenix_folder_real_jump_field():
    fields = cpe.io.read_images(REAL_IMAGES / "pediatric_cancer_atlas_profiling", channel_names={"5": "DNA"})
    assert fields.n_obs == 1
    row = fields.obs.iloc[0]
    assert (row["Metadata_Well"], row["Metadata_Site"]) == ("C03", 3)
    assert row["FileName_OrigDNA"] == "r03c03f03p01-ch5sk1fk1fl1.tiff"
    channels = [c.removeprefix("FileName_Orig") for c in fields.obs if c.startswith("FileName_Orig")]
    assert channels == ["ch1", "ch2", "ch3", "ch4", "ch6", "DNA"]


@needs_real_images
def test_read_nf1_folder_real_fields_skips_masks():
    fields = cpe.io.read_images(REAL_IMAGES / "NF1_cellpainting_data_shrunken", plate="Plate_2")
    assert fields.n_obs == 5
    assert sorted(fields.obs["Metadata_Well"]) == ["B7", "D6", "D7", "F7", "H12"]
    assert fields.obs.loc["Plate_2_B7_3", "FileName_OrigDAPI"] == "B7_01_1_3_DAPI_001.tif"
    assert not any("Mask" in str(v) for v in fields.obs.to_numpy().ravel())


@pytest.mark.parametrize("intensity_scale", ["plate", "field"])
def test_build_image_store_keeps_the_previous_store_when_a_tiff_is_corrupt(tmp_path, intensity_scale):
    write_fields(tmp_path, np.random.default_rng(0))
    fields = cpe.io.read_images(tmp_path / "load_data.csv")
    store = tmp_path / "store.h5"
    cpe.io.build_image_store(fields, store, intensity_scale=intensity_scale)
    before = cpe.io.read_store_images(store, [0, 1])
    (tmp_path / "B02_Mito.tif").write_bytes(b"II*\x00 not really a TIFF")  # the second field, half-way through
    with pytest.raises(ValueError, match=r"Cannot read .*B02_Mito\.tif as a TIFF image \(field 'P1_B02_1', channel"):
        cpe.io.build_image_store(fields, store, intensity_scale=intensity_scale, overwrite=True)
    np.testing.assert_array_equal(cpe.io.read_store_images(store, [0, 1]), before)
    with pytest.raises(ValueError, match=r"B02_Mito\.tif"):
        cpe.io.build_image_store(fields, tmp_path / "new.h5", intensity_scale=intensity_scale)
    assert not (tmp_path / "new.h5").exists()
    assert not list(tmp_path.glob(".incomplete-*"))


def test_image_store_readers_name_files_that_are_not_stores(tmp_path):
    text = tmp_path / "profiles.csv"
    text.write_text("Metadata_Well,Cells_A\nA01,1\n")
    with pytest.raises(ValueError, match=r"Cannot read .*profiles\.csv as an HDF5 image store"):
        cpe.io.read_store_images(text, [0])
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as file:
        file["X"] = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"other\.h5 is an HDF5 file but not an image store.*\['X'\]"):
        cpe.io.read_store_images(other, [0])
    with pytest.raises(FileNotFoundError, match=r"missing\.h5"):
        cpe.io.read_store_images(tmp_path / "missing.h5", [0])


def test_read_images_keeps_loaddata_text(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("001.tif", "1.tif"):
        tifffile.imwrite(tmp_path / name, rng.integers(0, 900, (8, 8), dtype=np.uint16))
    load = tmp_path / "load.csv"
    load.write_text(
        "Metadata_Plate,Metadata_Well,Metadata_Site,FileName_OrigDNA,PathName_OrigDNA\n"
        f"01,A01,1,001.tif,{tmp_path}\n1,A01,01,1.tif,{tmp_path}\n"
    )
    fields = cpe.io.read_images(load)
    assert list(fields.obs["Metadata_Plate"]) == ["01", "1"]
    assert list(fields.obs["FileName_OrigDNA"]) == ["001.tif", "1.tif"]
    assert list(fields.obs["Metadata_Site"]) == [1, 1]
    assert list(fields.obs_names) == ["01_A01_1", "1_A01_1"]
    store = cpe.io.build_image_store(fields, tmp_path / "store.h5", intensity_scale="field")
    assert store.n_obs == 2
    load.write_text("Metadata_Plate,Metadata_Well,Metadata_Site,FileName_OrigDNA\nP,A01,one,1.tif\n")
    with pytest.raises(ValueError, match=r"Metadata_Site must hold whole numbers, not \['one'\]"):
        cpe.io.read_images(load)


def test_read_store_images_refuses_rows_outside_the_store(tmp_path):
    write_fields(tmp_path, np.random.default_rng(0))
    store = tmp_path / "store.h5"
    cpe.io.build_image_store(cpe.io.read_images(tmp_path / "load_data.csv"), store)
    for rows in ([2], [-1]):
        with pytest.raises(IndexError, match=r"\[0, 2\), the rows of the store .*store\.h5"):
            cpe.io.read_store_images(store, rows)


def test_anndata_of_a_rebuilt_store_is_refused(tmp_path):
    path = tmp_path / "store.h5"
    earlier = cpe.datasets.simulate_images(path, 2, 2, n_plates=1, n_sites=1, image_size=16, seed=0)
    later = cpe.datasets.simulate_images(path, 2, 2, n_plates=1, n_sites=1, image_size=16, seed=1, overwrite=True)
    assert earlier.uns["image_store"]["store_id"] != later.uns["image_store"]["store_id"]
    with pytest.raises(ValueError, match="was rebuilt after this AnnData was made"):
        cpe.model.CWAMSN.setup_anndata(earlier, "Metadata_Perturbation", "Metadata_Well")
    cpe.model.CWAMSN.setup_anndata(later, "Metadata_Perturbation", "Metadata_Well")
