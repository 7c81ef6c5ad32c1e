"""Sphering (whitening) of profiles against the negative controls (Kessy et al. 2018)."""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
from anndata import AnnData

from cpembed._validation import control_flags, get_finite_matrix

from ._common import store_embedding

_METHODS = ("ZCA", "PCA")


def sphering(
    adata: AnnData,
    control_key: str,
    *,
    layer: str | None = None,
    epsilon: float = 1e-6,
    method: Literal["ZCA", "PCA"] = "ZCA",
    key_added: str = "X_sphering",
    copy: bool = False,
) -> AnnData | None:
    r"""Whiten all wells with the covariance of the negative-control wells.

    The transform is fitted on the control wells only and applied to every well: profiles are centred on the
    control mean :math:`\mu` and multiplied by a whitening matrix :math:`W` with :math:`W^\top \Sigma W \approx I`,
    where :math:`\Sigma = V \Lambda V^\top` is the control covariance (Kessy et al. 2018). Variation the controls
    share (plate, well-position and batch effects seen in DMSO wells) is scaled down; variation they lack is
    scaled up. This is the sphering step of pycytominer's ``Spherize`` and of the JUMP Cell Painting batch-correction
    benchmark (Arevalo et al. 2024).

    Parameters
    ----------
    adata
        Profiles, one row per well, already normalised and feature-selected.
    control_key
        Boolean ``.obs`` column, ``True`` for the negative-control wells (e.g. ``"Metadata_is_negcon"``).
    layer
        Whiten this layer instead of ``X``.
    epsilon
        Added to every eigenvalue of the control covariance: :math:`W = V (\Lambda + \epsilon I)^{-1/2} V^\top`
        (ZCA). The whitened controls then have covariance :math:`V \Lambda (\Lambda + \epsilon I)^{-1} V^\top`:
        directions with control variance far above ``epsilon`` get unit variance, directions far below it are only
        multiplied by :math:`\epsilon^{-1/2}`; a very large ``epsilon`` reduces the transform to centring and a
        uniform scaling. The default ``1e-6`` is pycytominer's default value (pycytominer adds it to the singular
        values of the centred controls rather than to the eigenvalues). The JUMP Cell Painting profiling recipe
        used by Arevalo et al. (2024) regularises the eigenvalues, as here, and picks ``epsilon`` between ``1e-5``
        and ``10`` by retrieval score. With fewer control wells than features the covariance is singular and
        ``epsilon`` sets how much the directions the controls do not span are amplified: raise it then.
    method
        ``"ZCA"`` (:math:`W = V (\Lambda + \epsilon I)^{-1/2} V^\top`: whitened features stay aligned with the
        original features, the choice of pycytominer and JUMP) or ``"PCA"``
        (:math:`W = V (\Lambda + \epsilon I)^{-1/2}`: coordinates along the control principal axes, largest first).
    key_added
        The whitened profiles go to ``.obsm[key_added]``, the parameters to ``.uns[key_added]["params"]``.
    copy
        Return a whitened copy instead of writing to ``adata``.

    Returns
    -------
    ``None``, or a copy of ``adata`` when ``copy=True``, with

    - ``.obsm[key_added]``: the whitened profiles, wells × features, float32;
    - ``.uns[key_added]["params"]``: ``control_key``, ``layer``, ``epsilon``, ``method`` and ``n_controls``.

    Raises
    ------
    KeyError
        When ``control_key`` is not an ``.obs`` column.
    TypeError
        When ``control_key`` is not boolean.
    ValueError
        When ``control_key`` flags fewer than two wells, when the data hold NaN or inf, when ``epsilon`` is not
        positive or ``method`` unknown.

    References
    ----------
    Kessy, A., Lewin, A. & Strimmer, K. Optimal whitening and decorrelation. *The American Statistician* 72,
    309–314 (2018).

    Arevalo, J., Su, E., Ewald, J. D., van Dijk, R., Carpenter, A. E. & Singh, S. Evaluating batch correction
    methods for image-based cell profiling. *Nature Communications* 15, 6516 (2024).
    """
    controls = _control_mask(adata, control_key)
    matrix = get_finite_matrix(adata, layer=layer)
    whitened = sphering_array(matrix, controls, epsilon=epsilon, method=method)
    params = {
        "control_key": control_key,
        "layer": layer,
        "epsilon": epsilon,
        "method": method,
        "n_controls": int(controls.sum()),
    }
    return store_embedding(adata, whitened, key_added, params, copy=copy)


def sphering_array(
    matrix: np.ndarray, controls: np.ndarray, *, epsilon: float = 1e-6, method: Literal["ZCA", "PCA"] = "ZCA"
) -> np.ndarray:
    """Whiten the rows of ``matrix`` with the mean and covariance of the rows flagged in the boolean ``controls``.

    See :func:`sphering` for the parameters. Computed in float64; returns float32.
    """
    if method not in _METHODS:
        raise ValueError(f"Unknown sphering method {method!r}; use one of {', '.join(_METHODS)}.")
    if not epsilon > 0:
        raise ValueError(f"epsilon must be positive (got {epsilon}): the control covariance may be singular.")
    values = np.asarray(matrix, dtype=np.float64)
    reference = values[controls]
    n_controls, n_features = reference.shape
    if n_controls <= n_features:
        warnings.warn(
            f"{n_controls} control wells for {n_features} features: the control covariance is singular, and "
            f"directions the controls do not span are scaled by 1/sqrt(epsilon) = {epsilon**-0.5:.3g}. Reduce the "
            "features (feature selection or PCA) or raise `epsilon`.",
            UserWarning,
            stacklevel=3,
        )
    mean = reference.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(np.atleast_2d(np.cov(reference, rowvar=False)))  # 1 × 1 for one feature
    eigenvalues, eigenvectors = np.clip(eigenvalues[::-1], 0.0, None), eigenvectors[:, ::-1]
    whitening = eigenvectors / np.sqrt(eigenvalues + epsilon)
    if method == "ZCA":
        whitening = whitening @ eigenvectors.T
    return ((values - mean) @ whitening).astype(np.float32)


def _control_mask(adata: AnnData, control_key: str) -> np.ndarray:
    controls = control_flags(adata, control_key)
    if controls.sum() < 2:
        raise ValueError(
            f"adata.obs[{control_key!r}] flags {int(controls.sum())} control wells; sphering needs at least two to "
            "estimate the control covariance."
        )
    return controls
