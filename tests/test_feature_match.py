"""Feature identities and the matching of a study's features onto a model's, on the bundled real feature sets."""

import re

import numpy as np
import pytest

import cpembed as cpe
from cpembed.io import CHANNEL_ALIASES, feature_identities, match_features


@pytest.mark.parametrize(
    ("name", "identity"),
    [
        ("Cells_Intensity_MeanIntensity_CorrDAPI", "Cells_Intensity_MeanIntensity_DNA"),
        ("Cells_Intensity_MeanIntensity_OrigDNA", "Cells_Intensity_MeanIntensity_DNA"),
        ("Nuclei_Texture_Contrast_CorrActin_10_00", "Nuclei_Texture_Contrast_AGP_10_0"),
        ("Cells_Correlation_Correlation_hoechst_ER", "Cells_Correlation_Correlation_DNA_ER"),
        ("Cells_Granularity_01_Mito", "Cells_Granularity_1_Mito"),
        ("Cells_RadialDistribution_FracAtD_DNA_1of4", "Cells_RadialDistribution_FracAtD_DNA_1of4"),
        # a channel token only where the module puts one: "Actin" in a feature's own name is left alone
        ("Cells_AreaShape_Actin", "Cells_AreaShape_Actin"),
        ("Cells_Intensity_MeanIntensity_CorrTub", "Cells_Intensity_MeanIntensity_Tub"),
        ("Area", "Area"),
    ],
)
def test_identity_of_one_name(name, identity):
    assert feature_identities([name]).tolist() == [identity]


def test_no_aliases_keeps_each_channel_name():
    assert feature_identities(["Cells_Intensity_MeanIntensity_CorrDAPI"], {}).tolist() == [
        "Cells_Intensity_MeanIntensity_DAPI"
    ]
    assert CHANNEL_ALIASES["DAPI"] == "DNA"


def test_match_by_name_then_identity_with_missing_and_unknown():
    reference = ["Cells_AreaShape_Area", "Cells_Intensity_MeanIntensity_DNA", "Nuclei_Texture_Contrast_ER_3_0"]
    names = ["Cells_Intensity_MeanIntensity_CorrDAPI", "Cells_AreaShape_Area", "Cells_Intensity_MeanIntensity_GFP"]
    match = match_features(reference, names)
    assert match.columns.tolist() == [1, 0, -1]
    assert match.by_identity == 1
    assert match.missing.tolist() == ["Nuclei_Texture_Contrast_ER_3_0"]
    assert match.shared.tolist() == reference[:2]
    assert match.unknown.tolist() == ["Cells_Intensity_MeanIntensity_GFP"]
    assert match.counts() == {"matched": 2, "by_identity": 1, "missing": 1, "unknown": 1}
    assert not match.is_identity
    assert match_features(reference, reference).is_identity
    assert not match_features(reference, reference[::-1]).is_identity


def test_an_ambiguous_identity_matches_nothing():
    reference = ["Cells_Intensity_MeanIntensity_DNA"]
    names = ["Cells_Intensity_MeanIntensity_CorrDAPI", "Cells_Intensity_MeanIntensity_OrigHoechst"]
    match = match_features(reference, names)
    assert match.columns.tolist() == [-1]
    assert len(match.unknown) == 2


def test_repeated_names_are_refused():
    with pytest.raises(ValueError, match="study features repeat"):
        match_features(["a_b_c"], ["x_y_z", "x_y_z"])


def _rewritten(name: str) -> str:
    """A name as written by the other pipeline: Corr prefix gone, BBBC021's DAPI and Actin read as DNA and AGP."""
    for dye, channel in (("DAPI", "DNA"), ("Actin", "AGP")):
        name = re.sub(rf"_(Corr)?{dye}(?=_|$)", f"_{channel}", name)
    return re.sub(r"_Corr(?=[A-Z])", "_", name)


def test_bbbc021_and_lincs_features_against_an_independent_rewrite():
    """The two bundled studies use different CellProfiler pipelines and dyes; the exact matches are their common
    names, and every further match is a BBBC021 name that, rewritten by hand, is the LINCS name."""
    bbbc021, lincs = cpe.datasets.bbbc021().var_names, cpe.datasets.lincs_plate().var_names
    plain = match_features(bbbc021, lincs, channel_aliases={})
    assert plain.n_matched == len(set(bbbc021) & set(lincs))
    match = match_features(bbbc021, lincs)
    matched = np.flatnonzero(match.columns >= 0)
    pairs = [(bbbc021[i], lincs[match.columns[i]]) for i in matched]
    renamed = [(ours, theirs) for ours, theirs in pairs if ours != theirs]
    assert len(renamed) == match.by_identity > 0
    assert all(_rewritten(ours) == theirs for ours, theirs in renamed)
    rewritten = {_rewritten(name) for name in bbbc021}
    # the hand rewrite finds no match that the identities miss (integer tokens aside, which it does not touch)
    assert match.n_matched == len(rewritten & set(lincs))
