"""cpe.pl.umap: the methods x colourings grid on real BBBC021 profiles."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
from matplotlib.colors import to_hex
from sklearn.decomposition import PCA

import cpembed as cpe
from cpembed.pl._umap import CONTROL_COLOR, compute_umap, umap_key


@pytest.fixture(scope="module")
def bbbc021():
    adata = cpe.datasets.bbbc021()
    adata = adata[adata.obs["Metadata_Batch"].isin(["Week1", "Week2", "Week10"])].copy()
    cpe.pp.recipe_jump(adata, "Metadata_Plate", "Metadata_is_negcon")
    adata.obsm["X_pca"] = PCA(10, random_state=0).fit_transform(np.asarray(adata.X, dtype=np.float64))
    adata.obsm["X_pca3"] = adata.obsm["X_pca"][:, :3].copy()
    return adata


def test_grid_has_one_panel_per_method_and_colouring(bbbc021):
    adata = bbbc021.copy()
    fig = cpe.pl.umap(
        adata,
        ["X_pca", "X_pca3"],
        ["Metadata_Batch", "Metadata_moa"],
        control_key="Metadata_is_negcon",
        return_fig=True,
    )
    axes = np.array(fig.axes).reshape(2, 2)
    assert [ax.get_title() for ax in axes[0]] == ["X_pca", "X_pca3"]
    assert [ax.get_ylabel() for ax in axes[:, 0]] == ["Metadata_Batch", "Metadata_moa"]
    for row in axes:
        for ax in row:
            assert len(ax.collections[0].get_offsets()) == adata.n_obs


def test_umaps_are_computed_once_and_stored_under_documented_keys(bbbc021):
    adata = bbbc021.copy()
    before = set(adata.obsm)
    cpe.pl.umap(adata, ["X_pca"], ["Metadata_moa"], show=False)
    assert set(adata.obsm) - before == {umap_key("X_pca")}
    np.testing.assert_allclose(adata.obsm["X_pca_umap"], compute_umap(bbbc021, "X_pca"), rtol=1e-5, atol=1e-5)
    untouched = bbbc021.copy()
    cpe.pl.umap(untouched, ["X_pca3"], ["Metadata_moa"], store=False, show=False)
    assert set(untouched.obsm) == set(bbbc021.obsm)


def test_controls_have_the_fixed_colour_and_legends_follow_category_order(bbbc021):
    adata = bbbc021.copy()
    fig = cpe.pl.umap(
        adata, ["X_pca"], ["Metadata_Batch", "Metadata_moa"], control_key="Metadata_is_negcon", return_fig=True
    )
    batch_ax, moa_ax = fig.axes
    weeks = [text.get_text() for text in batch_ax.get_legend().get_texts()]
    assert weeks == ["Week1", "Week2", "Week10"]
    colours = {to_hex(c) for c in moa_ax.collections[0].get_facecolors()}
    n_controls = int(adata.obs["Metadata_is_negcon"].sum())
    drawn_last = moa_ax.collections[0].get_facecolors()[-n_controls:]  # controls are drawn on top
    assert {to_hex(c) for c in drawn_last} == {CONTROL_COLOR}
    assert CONTROL_COLOR in colours
    assert len(colours) > 2
    assert moa_ax.get_legend().get_texts()[0].get_text() == "DMSO"


def test_bad_keys_are_named(bbbc021):
    with pytest.raises(KeyError, match="X_nope"):
        cpe.pl.umap(bbbc021, ["X_nope"], ["Metadata_moa"], show=False)
    with pytest.raises(KeyError, match="Metadata_nope"):
        cpe.pl.umap(bbbc021, ["X_pca"], ["Metadata_nope"], show=False)
