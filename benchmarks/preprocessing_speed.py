"""Time every cpembed.pp step and recipe_jump against the reference implementations, in one process.

Baselines: pycytominer 1.7 where it has the step (``get_na_columns``, ``frequency_threshold``, ``normalize`` run per
plate, ``correlation_threshold``); otherwise the JUMP batch-correction benchmark's own approach (pandas groupby with
scipy's MAD for the control variation filter, scipy ``rankdata`` + ``norm.ppf`` per column for the inverse normal
transform) or pandas (quantile clipping). The baselines are slow and memory hungry, so they may run on fewer wells
(``--baseline-wells``); cpembed then runs on both sizes and the ratio compares equal sizes.

    python benchmarks/preprocessing_speed.py                      # 100,000 wells x 3,000 features
    python benchmarks/preprocessing_speed.py --n-wells 20000 --n-features 500 --baseline-wells 5000
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable
from functools import partial

import anndata as ad
import numpy as np
import pandas as pd
from scipy.stats import median_abs_deviation, norm, rankdata

import cpembed as cpe

PLATE, NEGCON = "Metadata_Plate", "Metadata_is_negcon"
WELLS_PER_PLATE, CONTROLS_PER_PLATE = 384, 32


def make_profiles(n_wells: int, n_features: int, seed: int = 0) -> ad.AnnData:
    """Raw, positive, skewed profiles: latent factors (correlated feature groups), plate effects, a few NaN/inf."""
    rng = np.random.default_rng(seed)
    n_plates = -(-n_wells // WELLS_PER_PLATE)
    plate = np.repeat(np.arange(n_plates), WELLS_PER_PLATE)[:n_wells]
    latent = rng.standard_normal((n_wells, 32), dtype=np.float32)
    loadings = rng.standard_normal((32, n_features), dtype=np.float32) / np.float32(np.sqrt(32))
    plate_shift = rng.normal(scale=0.3, size=(n_plates, n_features)).astype(np.float32)
    matrix = latent @ loadings
    matrix += plate_shift[plate]
    matrix += 0.3 * rng.standard_normal((n_wells, n_features), dtype=np.float32)
    np.exp(matrix, out=matrix)
    matrix[rng.integers(0, n_wells, 20), rng.integers(0, n_features, 20)] = np.nan
    matrix[rng.integers(0, n_wells, 5), rng.integers(0, n_features, 5)] = np.inf
    obs = pd.DataFrame(
        {
            PLATE: pd.Categorical([f"plate{p:04d}" for p in plate]),
            NEGCON: np.arange(n_wells) % WELLS_PER_PLATE < CONTROLS_PER_PLATE,
        },
        index=pd.RangeIndex(n_wells).astype(str),
    )
    names = [f"Cells_Intensity_Feature{j:04d}_DNA" for j in range(n_features)]
    return ad.AnnData(matrix, obs=obs, var=pd.DataFrame(index=names))


def to_frame(adata: ad.AnnData) -> pd.DataFrame:
    df = pd.DataFrame(adata.X, columns=list(adata.var_names))
    df[PLATE] = adata.obs[PLATE].astype(str).to_numpy()
    df[NEGCON] = adata.obs[NEGCON].to_numpy()
    return df


# ---------------------------------------------------------------------------------------------- baselines


def baseline_nonfinite(df: pd.DataFrame, features: list[str]) -> list[str]:
    from pycytominer.operations import get_na_columns

    return get_na_columns(df.replace([np.inf, -np.inf], np.nan), features=features, cutoff=0)


def baseline_control_variation(df: pd.DataFrame, features: list[str]) -> list[str]:
    controls = df[df[NEGCON]].groupby(PLATE)[features]
    median = controls.median()
    mad = controls.apply(lambda plate: pd.Series(median_abs_deviation(plate, axis=0), index=features))
    coef_var = (mad / median).abs().replace(np.inf, 0).fillna(0)
    return [name for name in features if not ((mad[name] != 0) & (coef_var[name] > 1e-3)).all()]


def baseline_normalize(df: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    from pycytominer import normalize

    return pd.concat(
        normalize(
            plate, features=features, meta_features=[PLATE, NEGCON], samples=f"{NEGCON} == True", method="mad_robustize"
        )
        for _, plate in df.groupby(PLATE)
    )


def baseline_int(df: pd.DataFrame, features: list[str]) -> np.ndarray:
    values = df[features].to_numpy()
    n = values.shape[0]
    return np.column_stack([norm.ppf((rankdata(values[:, j]) - 3 / 8) / (n + 1 / 4)) for j in range(values.shape[1])])


def baseline_frequency(df: pd.DataFrame, features: list[str]) -> list[str]:
    from pycytominer.operations import frequency_threshold

    return frequency_threshold(df, features=features)


def baseline_correlation(df: pd.DataFrame, features: list[str]) -> list[str]:
    from pycytominer.operations import correlation_threshold

    return correlation_threshold(df, features=features)


def baseline_clip(df: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    values = df[features]
    return values.clip(lower=values.quantile(0.01), upper=values.quantile(0.99), axis=1)


# ------------------------------------------------------------------------------------------------ timing


def timed(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        function()
    return time.perf_counter() - start


def stage_inputs(adata: ad.AnnData) -> dict[str, ad.AnnData]:
    """The input each step sees inside the recipe (cleaned, then normalised, then transformed)."""
    clean = cpe.pp.drop_nonfinite(adata, copy=True)
    cpe.pp.control_variation_filter(clean, PLATE, NEGCON)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        normalized = cpe.pp.normalize_to_controls(clean, PLATE, NEGCON, copy=True)
    transformed = cpe.pp.rank_inverse_normal(normalized, copy=True)
    return {"raw": adata, "clean": clean, "normalized": normalized, "transformed": transformed}


STEPS = [
    # name, input stage, cpembed call, baseline name, baseline call
    ("drop_nonfinite", "raw", lambda a: cpe.pp.drop_nonfinite(a, copy=True), "pycytominer get_na_columns",
     baseline_nonfinite),
    ("control_variation_filter", "clean", lambda a: cpe.pp.control_variation_filter(a, PLATE, NEGCON, copy=True),
     "pandas groupby + scipy MAD", baseline_control_variation),
    ("normalize_to_controls", "clean", lambda a: cpe.pp.normalize_to_controls(a, PLATE, NEGCON, copy=True),
     "pycytominer normalize per plate", baseline_normalize),
    ("rank_inverse_normal", "normalized", lambda a: cpe.pp.rank_inverse_normal(a, copy=True),
     "scipy rankdata+ppf per column", baseline_int),
    ("variation_filter", "transformed", lambda a: cpe.pp.variation_filter(a, copy=True),
     "pycytominer frequency_threshold", baseline_frequency),
    ("correlation_filter", "transformed", lambda a: cpe.pp.correlation_filter(a, copy=True),
     "pycytominer correlation_threshold", baseline_correlation),
    ("clip_quantiles", "normalized", lambda a: cpe.pp.clip_quantiles(a, copy=True), "pandas quantile + clip",
     baseline_clip),
]  # fmt: skip


def run(n_wells: int, n_features: int, baseline_wells: int) -> pd.DataFrame:
    full = make_profiles(n_wells, n_features)
    small = full[:baseline_wells].copy() if baseline_wells < n_wells else full
    stages_full = stage_inputs(full)
    stages_small = stage_inputs(small) if small is not full else stages_full
    rows = []
    for name, stage, ours, baseline_name, baseline in STEPS:
        ours_full = timed(partial(ours, stages_full[stage]))
        ours_small = timed(partial(ours, stages_small[stage])) if small is not full else ours_full
        baseline_time = timed(partial(baseline, to_frame(stages_small[stage]), list(stages_small[stage].var_names)))
        rows.append((name, ours_full, ours_small, baseline_name, baseline_time))
        print(f"{name}: cpembed {ours_full:.2f} s, baseline {baseline_time:.2f} s", flush=True)
    recipe = partial(cpe.pp.recipe_jump, plate_key=PLATE, control_key=NEGCON, copy=True)
    recipe_full = timed(partial(recipe, full))
    recipe_small = timed(partial(recipe, small)) if small is not full else recipe_full
    baseline_recipe = sum(row[4] for row in rows if row[0] != "clip_quantiles")
    rows.append(("recipe_jump", recipe_full, recipe_small, "sum of the baselines above", baseline_recipe))
    table = pd.DataFrame(
        rows, columns=["step", f"cpembed {n_wells}", f"cpembed {baseline_wells}", "baseline", "baseline s"]
    )
    table["speed-up"] = table["baseline s"] / table[f"cpembed {baseline_wells}"]
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-wells", type=int, default=100_000)
    parser.add_argument("--n-features", type=int, default=3_000)
    parser.add_argument("--baseline-wells", type=int, default=None, help="wells for the baselines (default: all)")
    args = parser.parse_args()
    baseline_wells = min(args.baseline_wells or args.n_wells, args.n_wells)
    table = run(args.n_wells, args.n_features, baseline_wells)
    print(
        f"\n{args.n_features} features; cpembed timed on {args.n_wells} and {baseline_wells} wells, "
        f"baselines on {baseline_wells} wells (seconds; speed-up at {baseline_wells} wells)"
    )
    print(table.to_string(index=False, float_format=lambda value: f"{value:.2f}"))


if __name__ == "__main__":
    main()
