"""Real Cell Painting profiles shipped with the package (files, sources and licences in ``datasets/data/``)."""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import as_file, files

from anndata import AnnData

from cpembed.io import read_profiles

_BBBC021_FILE = "bbbc021_well_profiles.csv.gz"
_LINCS_FILE = "lincs_SQ00015054_normalized_feature_select.csv.gz"


@cache
def _read_bundled(filename: str) -> AnnData:
    """Parse a bundled file once per process; the public functions hand out copies."""
    with as_file(files(__package__) / "data" / filename) as path:
        return read_profiles(path)


def _natural_key(text: str) -> list[int | str]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def bbbc021() -> AnnData:
    """BBBC021: MCF-7 breast cancer cells treated with 38 compounds, 632 wells of CellProfiler per-well means.

    The well profiles of the Broad Bioimage Benchmark Collection set BBBC021 (Caie et al. 2010) as used by
    Ljosa et al. (2013): the mean over cells of 516 raw (not normalised) CellProfiler features per well, joined
    with compound, concentration, replicate and mechanism-of-action (MoA) annotations.

    Every compound was imaged in a single week, so compound is confounded with batch: score MoA retrieval
    "not same compound" and "not same compound, not same batch", as Ljosa et al. (2013) did.

    Returns
    -------
    A new AnnData (a fresh copy at every call) of 632 wells × 516 features with

    - ``X``: raw per-well mean features, float32;
    - ``obs``: ``Metadata_Batch`` (imaging week, ``Week1`` … ``Week10``, categories in that order),
      ``Metadata_Plate`` (55 plates), ``Metadata_Well``, ``Metadata_Compound`` (38 compounds and ``DMSO``),
      ``Metadata_Concentration`` (µM), ``Metadata_Replicate``, ``Metadata_moa`` (12 MoA classes and ``DMSO``)
      and ``Metadata_is_negcon`` (``True`` for the 330 DMSO wells, present on every plate);
    - ``var``: :func:`~cpembed.io.parse_feature_names` of the feature names.

    References
    ----------
    Caie, P. D. et al. High-content phenotypic profiling of drug response signatures across distinct cancer cells.
    *Molecular Cancer Therapeutics* 9, 1913–1926 (2010).

    Ljosa, V., Caie, P. D., ter Horst, R., Sokolnicki, K. L., Jenkins, E. L., Daya, S., Roberts, M. E., Jones, T. R.,
    Singh, S., Genovesio, A., Clemons, P. A., Carragher, N. O. & Carpenter, A. E. Comparison of methods for
    image-based profiling of cellular morphological responses to small-molecule treatment.
    *Journal of Biomolecular Screening* 18, 1321–1329 (2013).

    Examples
    --------
    >>> import cpembed as cpe
    >>> adata = cpe.datasets.bbbc021()
    >>> adata.shape
    (632, 516)
    """
    adata = _read_bundled(_BBBC021_FILE).copy()
    weeks = adata.obs["Metadata_Batch"]
    adata.obs["Metadata_Batch"] = weeks.cat.reorder_categories(sorted(weeks.cat.categories, key=_natural_key))
    return adata


def lincs_plate() -> AnnData:
    """One plate (SQ00015054) of the LINCS Cell Painting data set: A549 cells, 58 compounds and DMSO.

    384 wells × 454 features, already normalised and feature-selected with pycytominer by the LINCS Cell Painting
    project (the example data of cytominer-eval). A single plate: small, good for tests and examples.

    Returns
    -------
    A new AnnData (a fresh copy at every call) with

    - ``X``: normalised, feature-selected profiles, float32;
    - ``obs``: the 26 ``Metadata_*`` columns of the source table under their own names (``Metadata_broad_sample``,
      ``Metadata_moa``, ``Metadata_target``, ``Metadata_mmoles_per_liter``, ``Metadata_Plate``, ``Metadata_Well``,
      ...) plus ``Metadata_is_negcon``: ``True`` for the 24 DMSO wells (``Metadata_broad_sample == "DMSO"``,
      the wells the source marks ``Metadata_pert_type == "control"``);
    - ``var``: :func:`~cpembed.io.parse_feature_names` of the feature names.

    References
    ----------
    Way, G. P., Natoli, T., Adeboye, A., Litichevskiy, L., Yang, A., Lu, X., Caicedo, J. C., Cimini, B. A.,
    Karhohs, K., Logan, D. J., Rohban, M. H., Kost-Alimova, M., Hartland, K., Bornholdt, M., Chandrasekaran, S. N.,
    Haghighi, M., Weisbart, E., Singh, S., Subramanian, A. & Carpenter, A. E. Morphology and gene expression
    profiling provide complementary information for mapping cell state. *Cell Systems* 13, 911–923 (2022).

    LINCS Cell Painting profiles: https://github.com/broadinstitute/lincs-cell-painting

    Examples
    --------
    >>> import cpembed as cpe
    >>> adata = cpe.datasets.lincs_plate()
    >>> int(adata.obs["Metadata_is_negcon"].sum())
    24
    """
    adata = _read_bundled(_LINCS_FILE).copy()
    adata.obs["Metadata_is_negcon"] = (adata.obs["Metadata_broad_sample"] == "DMSO").to_numpy(dtype=bool)
    return adata
