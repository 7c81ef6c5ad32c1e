import hashlib
from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import cpembed as cpe

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BUNDLED = files("cpembed.datasets") / "data"

needs_shared = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason="compares against the source tables in ../shared/data, absent here"
)


def test_bbbc021_content():
    adata = cpe.datasets.bbbc021()
    assert adata.shape == (632, 516)
    assert adata.X.dtype == np.float32
    assert np.isfinite(adata.X).all()
    obs = adata.obs
    assert list(obs.columns) == [
        "Metadata_Batch",
        "Metadata_Plate",
        "Metadata_Well",
        "Metadata_Compound",
        "Metadata_Concentration",
        "Metadata_Replicate",
        "Metadata_moa",
        "Metadata_is_negcon",
    ]
    assert obs["Metadata_is_negcon"].dtype == bool
    assert obs["Metadata_is_negcon"].sum() == 330
    assert (obs["Metadata_is_negcon"] == (obs["Metadata_Compound"] == "DMSO")).all()
    assert obs["Metadata_Batch"].nunique() == 10
    assert list(obs["Metadata_Batch"].cat.categories) == [f"Week{week}" for week in range(1, 11)]
    assert obs["Metadata_Plate"].nunique() == 55
    assert obs["Metadata_Compound"].nunique() == 39
    assert obs["Metadata_moa"].nunique() == 13
    assert pd.api.types.is_float_dtype(obs["Metadata_Concentration"])
    assert pd.api.types.is_integer_dtype(obs["Metadata_Replicate"])
    # every plate carries DMSO wells, and plates never span two weeks
    assert set(obs.loc[obs["Metadata_is_negcon"], "Metadata_Plate"]) == set(obs["Metadata_Plate"])
    assert (obs.groupby("Metadata_Plate", observed=True)["Metadata_Batch"].nunique() == 1).all()
    assert list(adata.var.columns) == ["compartment", "measurement", "channel", "channel_2"]
    assert set(adata.var["compartment"]) == {"Cells", "Cytoplasm", "Nuclei"}
    assert set(adata.var["channel"]) == {"", "Actin", "Tub", "DAPI"}


def test_lincs_plate_content():
    adata = cpe.datasets.lincs_plate()
    assert adata.shape == (384, 454)
    assert adata.X.dtype == np.float32
    obs = adata.obs
    assert obs["Metadata_is_negcon"].dtype == bool
    assert obs["Metadata_is_negcon"].sum() == 24
    assert (obs["Metadata_is_negcon"] == (obs["Metadata_pert_type"] == "control")).all()
    assert obs["Metadata_Plate"].nunique() == 1
    assert obs["Metadata_Well"].nunique() == 384
    assert obs.loc[~obs["Metadata_is_negcon"], "Metadata_broad_sample"].nunique() == 58
    assert isinstance(obs["Metadata_moa"].dtype, pd.CategoricalDtype)
    assert obs.loc[obs["Metadata_is_negcon"], "Metadata_moa"].isna().all()
    assert set(adata.var["channel"]) == {"", "AGP", "DNA", "ER", "Mito", "RNA"}


@pytest.mark.parametrize("load", [cpe.datasets.bbbc021, cpe.datasets.lincs_plate])
def test_each_call_returns_a_fresh_copy(load):
    first = load()
    first.X[0, 0] = -12345.0
    first.obs["Metadata_Well"] = "changed"
    second = load()
    assert second.X[0, 0] != -12345.0
    assert (second.obs["Metadata_Well"] != "changed").all()


@pytest.mark.parametrize(
    ("load", "source"),
    [
        (cpe.datasets.bbbc021, "bbbc021/bbbc021_well_profiles_annotated.csv.gz"),
        (cpe.datasets.lincs_plate, "lincs_plate/SQ00015054_normalized_feature_select.csv.gz"),
    ],
)
@needs_shared
def test_bundled_matrix_equals_source_table(load, source):
    table = pd.read_csv(SHARED_DATA / source, float_precision="round_trip")
    features = [name for name in table.columns if not name.startswith("Metadata_")]
    adata = load()
    assert list(adata.var_names) == features
    np.testing.assert_array_equal(adata.X, table[features].to_numpy(dtype=np.float32))
    for name in table.columns.difference(features):
        assert adata.obs[name].astype(object).reset_index(drop=True).equals(table[name].astype(object)), name


@needs_shared
def test_bundled_files_are_unchanged_copies():
    pairs = {
        "bbbc021_well_profiles.csv.gz": "bbbc021/bbbc021_well_profiles_annotated.csv.gz",
        "lincs_SQ00015054_normalized_feature_select.csv.gz": "lincs_plate/SQ00015054_normalized_feature_select.csv.gz",
        "LICENSE_bbbc021": "bbbc021/LICENSE",
        "LICENSE_lincs.md": "lincs_plate/LICENSE.md",
    }
    for bundled, source in pairs.items():
        digest = hashlib.sha256((BUNDLED / bundled).read_bytes()).hexdigest()
        assert digest == hashlib.sha256((SHARED_DATA / source).read_bytes()).hexdigest(), bundled


def test_licences_and_readme_ship_with_the_data():
    names = {entry.name for entry in BUNDLED.iterdir()}
    assert {"README.md", "LICENSE_bbbc021", "LICENSE_lincs.md"} <= names
    readme = (BUNDLED / "README.md").read_text()
    assert "bbbc021_well_profiles.csv.gz" in readme
    assert "lincs_SQ00015054_normalized_feature_select.csv.gz" in readme
