"""cpe.pl.umap: the methods x colourings grid on real BBBC021 profiles."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
from matplotlib.colors import to_hex
from sklearn.decomposition import PCA

import cpembed as cpe
from cpembed.pl._umap import CONTROL_COLOR, compute_umap


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


def test_plotting_leaves_adata_unchanged_unless_asked_to_store(bbbc021):
    untouched = bbbc021.copy()
    fig = cpe.pl.umap(untouched, ["X_pca", "X_pca3"], ["Metadata_moa"], return_fig=True)
    assert set(untouched.obsm) == set(bbbc021.obsm)
    assert set(untouched.uns) == set(bbbc021.uns)
    np.testing.assert_allclose(_plotted(fig), compute_umap(bbbc021, "X_pca"), rtol=1e-5, atol=1e-5)
    adata = bbbc021.copy()
    cpe.pl.umap(adata, ["X_pca", "X_pca3"], ["Metadata_moa"], key_added=["pca_layout", "pca3_layout"], show=False)
    assert set(adata.obsm) - set(bbbc021.obsm) == {"pca_layout", "pca3_layout"}
    assert set(adata.uns) - set(bbbc021.uns) == {"cpe_umap"}
    record = adata.uns["cpe_umap"]["pca_layout"]
    assert record["params"] == {"basis": "X_pca", "n_neighbors": 15, "random_state": 0}
    np.testing.assert_allclose(adata.obsm["pca_layout"], compute_umap(bbbc021, "X_pca"), rtol=1e-5, atol=1e-5)


def test_key_added_needs_one_key_per_basis(bbbc021):
    with pytest.raises(ValueError, match="Got 1 keys in key_added for 2 embeddings"):
        cpe.pl.umap(bbbc021.copy(), ["X_pca", "X_pca3"], "Metadata_moa", key_added="X_pca_umap", show=False)


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


def _plotted(fig) -> np.ndarray:
    """Coordinates of the first panel, in the order of the wells (no control colouring, so no reordering)."""
    import matplotlib.pyplot as plt

    coordinates = np.asarray(fig.axes[0].collections[0].get_offsets())
    plt.close(fig)
    return coordinates


def test_stored_umap_is_reused_only_for_the_same_basis_and_settings(bbbc021):
    adata = bbbc021.copy()
    stored = {"key_added": "X_pca3_umap", "return_fig": True}
    first = _plotted(cpe.pl.umap(adata, "X_pca3", "Metadata_moa", **stored))
    np.testing.assert_array_equal(adata.obsm["X_pca3_umap"], first)  # what was stored is what was drawn
    np.testing.assert_array_equal(_plotted(cpe.pl.umap(adata, "X_pca3", "Metadata_moa", **stored)), first)
    adata.obsm["X_pca3"] = adata.obsm["X_pca"][:, 3:6].copy()  # the basis changed: its UMAP is stale
    changed = _plotted(cpe.pl.umap(adata, "X_pca3", "Metadata_moa", **stored))
    np.testing.assert_allclose(changed, compute_umap(adata, "X_pca3"), rtol=1e-5, atol=1e-5)
    other_k = _plotted(cpe.pl.umap(adata, "X_pca3", "Metadata_moa", n_neighbors=5, **stored))
    np.testing.assert_allclose(other_k, compute_umap(adata, "X_pca3", n_neighbors=5), rtol=1e-5, atol=1e-5)
    assert adata.uns["cpe_umap"]["X_pca3_umap"]["params"]["n_neighbors"] == 5


def test_scanpy_umap_is_neither_shown_nor_overwritten(bbbc021):
    """After sc.tl.umap, X_umap holds the UMAP of scanpy's own graph: the plot of "X" must not show it."""
    adata = bbbc021.copy()
    adata.obsm["X_umap"] = np.zeros((adata.n_obs, 2))
    fig = cpe.pl.umap(adata, ["X"], "Metadata_moa", return_fig=True)
    np.testing.assert_allclose(_plotted(fig), compute_umap(adata, "X"), rtol=1e-5, atol=1e-5)
    assert (adata.obsm["X_umap"] == 0).all()
    adata.obsm["X_pca_umap"] = np.zeros((adata.n_obs, 2))  # written by someone else
    with pytest.warns(UserWarning, match=r"adata.obsm\['X_pca_umap'\] was not written by cpembed.pl.umap"):
        fig = cpe.pl.umap(adata, "X_pca", "Metadata_moa", key_added="X_pca_umap", return_fig=True)
    assert (adata.obsm["X_pca_umap"] == 0).all()
    assert np.ptp(_plotted(fig), axis=0).min() > 0


def test_control_flags_follow_the_shared_rule(bbbc021):
    adata = bbbc021.copy()
    adata.obs["flag_as_text"] = adata.obs["Metadata_is_negcon"].astype(str)
    with pytest.raises(TypeError, match=r"adata.obs\['flag_as_text'\] must be boolean"):
        cpe.pl.umap(adata, "X_pca", "Metadata_moa", control_key="flag_as_text", show=False)


def test_umap_input_errors_name_the_fix(bbbc021):
    with pytest.raises(ValueError, match="A UMAP needs at least 4 wells, got 1: plot more wells"):
        cpe.pl.umap(bbbc021[:1].copy(), "X_pca", "Metadata_moa", show=False)
    with pytest.raises(ValueError, match=r"n_neighbors must lie between 2 and the number of wells \(10\), got 15"):
        cpe.pl.umap(bbbc021[:10].copy(), "X_pca", "Metadata_moa", show=False)
    adata = bbbc021.copy()
    adata.obsm["X_nan"] = adata.obsm["X_pca"].copy()
    adata.obsm["X_nan"][0, 0] = np.nan
    with pytest.raises(ValueError, match=r"adata.obsm\['X_nan'\] contains 1 NaN"):
        cpe.pl.umap(adata, "X_nan", "Metadata_moa", key_added="X_nan_umap", show=False)
    adata.obsm["X_huge"] = adata.obsm["X_pca"] * 1e38
    with pytest.raises(ValueError, match=r"adata.obsm\['X_huge'\] in float32, as UMAP reads it, would hold"):
        cpe.pl.umap(adata, "X_huge", "Metadata_moa", show=False)
    assert "X_nan_umap" not in adata.obsm


def test_stored_umap_is_reused_after_an_h5ad_round_trip(bbbc021, tmp_path, monkeypatch):
    import anndata as ad

    adata = bbbc021.copy()
    first = _plotted(cpe.pl.umap(adata, "X_pca3", "Metadata_moa", key_added="X_pca3_umap", return_fig=True))
    adata.write_h5ad(tmp_path / "umap.h5ad")
    again = ad.read_h5ad(tmp_path / "umap.h5ad")

    def refuse(*args, **kwargs):
        raise AssertionError("the stored UMAP was recomputed")

    monkeypatch.setattr(cpe.pl._umap, "_umap_of", refuse)
    fig = cpe.pl.umap(again, "X_pca3", "Metadata_moa", key_added="X_pca3_umap", return_fig=True)
    np.testing.assert_array_equal(_plotted(fig), first)
