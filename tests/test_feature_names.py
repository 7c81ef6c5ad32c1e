import pandas as pd
import pytest

import cpembed as cpe
from cpembed.io import parse_feature_names


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # Intensity: channel last; Corr/Orig image prefixes dropped (BBBC021 and older pipelines)
        ("Cells_Intensity_MeanIntensity_Mito", ("Cells", "Intensity", "Mito", "")),
        ("Cells_Intensity_MeanIntensityEdge_CorrMito", ("Cells", "Intensity", "Mito", "")),
        ("Nuclei_Intensity_LowerQuartileIntensity_CorrDAPI", ("Nuclei", "Intensity", "DAPI", "")),
        ("Image_Intensity_TotalIntensity_OrigDNA", ("Image", "Intensity", "DNA", "")),
        ("Cells_Intensity_MeanIntensity_OrigBrightfield", ("Cells", "Intensity", "Brightfield", "")),
        ("Cells_Intensity_MeanIntensity", ("Cells", "Intensity", "", "")),
        # Texture: channel after the feature, then scale, angle and (JUMP) gray levels
        ("Cytoplasm_Texture_AngularSecondMoment_AGP_10_00", ("Cytoplasm", "Texture", "AGP", "")),
        ("Cells_Texture_AngularSecondMoment_AGP_10_01_256", ("Cells", "Texture", "AGP", "")),
        ("Nuclei_Texture_SumVariance_CorrDAPI_10_0", ("Nuclei", "Texture", "DAPI", "")),
        ("Cells_Texture_InfoMeas1_CorrTub_3_0", ("Cells", "Texture", "Tub", "")),
        # Correlation: two channels
        ("Nuclei_Correlation_Correlation_DNA_ER", ("Nuclei", "Correlation", "DNA", "ER")),
        ("Cells_Correlation_Costes_DNA_ER", ("Cells", "Correlation", "DNA", "ER")),
        ("Nuclei_Correlation_RWC_AGP_DNA", ("Nuclei", "Correlation", "AGP", "DNA")),
        ("Cells_Correlation_Correlation_OrigDNA_OrigER", ("Cells", "Correlation", "DNA", "ER")),
        # Granularity: spectrum index, then channel
        ("Cells_Granularity_1_Mito", ("Cells", "Granularity", "Mito", "")),
        ("Cytoplasm_Granularity_16_ER", ("Cytoplasm", "Granularity", "ER", "")),
        # RadialDistribution: channel after the feature, then the bin or Zernike indices
        ("Cells_RadialDistribution_FracAtD_DNA_1of4", ("Cells", "RadialDistribution", "DNA", "")),
        ("Cells_RadialDistribution_MeanFrac_OrigDNA_2of4", ("Cells", "RadialDistribution", "DNA", "")),
        ("Cells_RadialDistribution_ZernikeMagnitude_AGP_0_0", ("Cells", "RadialDistribution", "AGP", "")),
        # AreaShape and other channel-free modules
        ("Cells_AreaShape_Area", ("Cells", "AreaShape", "", "")),
        ("Cells_AreaShape_Zernike_0_0", ("Cells", "AreaShape", "", "")),
        ("Nuclei_Neighbors_NumberOfNeighbors_Adjacent", ("Nuclei", "Neighbors", "", "")),
        ("Cells_Neighbors_AngleBetweenNeighbors_10", ("Cells", "Neighbors", "", "")),
        ("Cells_Children_Cytoplasm_Count", ("Cells", "Children", "", "")),
        ("Cells_Parent_Nuclei", ("Cells", "Parent", "", "")),
        # Location: a channel only for intensity-weighted positions
        ("Cells_Location_Center_X", ("Cells", "Location", "", "")),
        ("Cells_Location_CenterMassIntensity_X_CorrActin", ("Cells", "Location", "Actin", "")),
        ("Cytoplasm_Location_MaxIntensity_Y_DNA", ("Cytoplasm", "Location", "DNA", "")),
        ("Cells_Location_CenterMassIntensity_Z_DNA", ("Cells", "Location", "DNA", "")),
        # not a CellProfiler name
        ("Area", ("", "", "", "")),
    ],
)
def test_parse_one_name(name, expected):
    parsed = parse_feature_names([name])
    assert tuple(parsed.loc[name]) == expected


def test_frame_layout():
    names = ["Cells_AreaShape_Area", "Nuclei_Correlation_Correlation_DNA_ER"]
    parsed = parse_feature_names(pd.Index(names))
    assert list(parsed.index) == names
    assert list(parsed.columns) == ["compartment", "measurement", "channel", "channel_2"]


def _bbbc021_dye(name: str) -> str:
    """Brute-force dye lookup for BBBC021: its three stains appear in names as CorrDAPI, CorrTub, CorrActin."""
    return next((dye for dye in ("DAPI", "Tub", "Actin") if f"_Corr{dye}" in name), "")


def test_bbbc021_names_against_brute_force():
    var = cpe.datasets.bbbc021().var
    expected = [_bbbc021_dye(name) for name in var.index]
    assert var["channel"].tolist() == expected
    assert (var["compartment"] == [name.split("_")[0] for name in var.index]).all()
    assert (var["measurement"] == [name.split("_")[1] for name in var.index]).all()
    assert set(var["measurement"]) == {
        "AreaShape",
        "Children",
        "Intensity",
        "Location",
        "Neighbors",
        "Number",
        "Parent",
        "Texture",
    }


def _lincs_dyes(name: str) -> list[str]:
    """Brute-force dye lookup for LINCS: the five JUMP stains, in the order they appear in the name."""
    tokens = name.split("_")[2:]
    return [token for token in tokens if token in {"AGP", "DNA", "ER", "Mito", "RNA"}]


def test_lincs_names_against_brute_force():
    var = cpe.datasets.lincs_plate().var
    for name, row in var.iterrows():
        dyes = _lincs_dyes(name)
        assert [row["channel"], row["channel_2"]] == [*dyes, "", ""][:2], name
        assert (row["channel_2"] != "") == (row["measurement"] == "Correlation"), name
