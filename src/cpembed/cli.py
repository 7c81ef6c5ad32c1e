"""The ``cpembed`` command: ``cpembed run`` preprocesses, embeds, benchmarks and reports a profile table."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from ._report import (
    CPU_TIME_BUDGET,
    GPU_TIME_BUDGET,
    METHODS,
    CellPainTRSettings,
    CWAMSNSettings,
    ReportConfig,
    parse_methods,
)
from .io._profiles import _SUFFIXES as PROFILE_SUFFIXES

logger = logging.getLogger("cpembed")

#: Exit status of bad arguments or input (argparse's).
USAGE_ERROR = 2
#: Errors of the input and the arguments, found while loading, checking and preprocessing: one line, no traceback.
USER_ERRORS = (OSError, KeyError, TypeError, ValueError)
#: mAP null size of ``--quick`` (enough to run every metric, not to rank methods).
QUICK_NULL_SIZE = 1000
#: BBBC021's concentration column: with it, ``cpembed run`` on the bundled data adds NSC / NSCB MoA accuracy.
BBBC021_CONCENTRATION_KEY = "Metadata_Concentration"
#: Key options and what each names; omitted, they take BBBC021's column names (:class:`ReportConfig`).
KEY_OPTIONS = {
    "batch_key": "obs column of the batch/source to correct",
    "plate_key": "obs column of the plate",
    "perturbation_key": "obs column of the perturbation",
    "control_key": "boolean obs column, True for controls",
    "moa_key": "obs column of the MoA; 'none' to score perturbations",
    "well_key": "obs column of the well position; 'none' if absent",
}
#: Input files ``cpembed run`` reads: profile tables, or an AnnData.
INPUT_SUFFIXES = (*PROFILE_SUFFIXES, ".h5ad")
#: What ``cpembed --help`` says (plain text: argparse prints it as written).
DESCRIPTION = "cpembed run: preprocess, embed, benchmark and report a Cell Painting profile table."


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows the default of every option that has one (not of flags, nor of options whose default is None)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``cpembed``."""
    parser = argparse.ArgumentParser(prog="cpembed", description=DESCRIPTION, formatter_class=_HelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run",
        help="preprocess, embed and benchmark profiles; write a report folder",
        description="Preprocess profiles (JUMP recipe), embed them with baselines and CellPainTR (and CWA-MSN on "
        "images), score every embedding and write a report folder. Without INPUT the bundled BBBC021 profiles are "
        "used. The key options default to BBBC021's column names; on your own INPUT a notice names each default "
        "used, so pass the keys of your table.",
        formatter_class=_HelpFormatter,
    )
    defaults = ReportConfig()
    run.add_argument("input", nargs="?", type=Path, help=f"profile table: {', '.join(INPUT_SUFFIXES)}")
    run.add_argument("--out", type=Path, required=True, help="report folder to write")
    for name, text in KEY_OPTIONS.items():
        run.add_argument(_option(name), default=None, help=f"{text} (default: {getattr(defaults, name)}, BBBC021's)")
    run.add_argument(
        "--concentration-key",
        default=None,
        help=f"obs column of the concentration: adds NSC/NSCB MoA accuracy (default on BBBC021: "
        f"{BBBC021_CONCENTRATION_KEY})",
    )
    run.add_argument(
        "--methods",
        type=_methods_argument,
        default=None,
        help=f"comma-separated methods from {','.join(METHODS)} (default: all but cwamsn, plus cwamsn with --images)",
    )
    run.add_argument("--images", type=Path, default=None, help="image AnnData (.h5ad with an image store) for CWA-MSN")
    run.add_argument("--quick", action="store_true", help="tiny CellPainTR and a small mAP null: a fast check run")
    run.add_argument(
        "--time-budget",
        type=float,
        default=None,
        metavar="MINUTES",
        help="minutes CellPainTR may train; a longer schedule trains a share of each epoch's minibatches, with the "
        f"estimate logged before training (default: {CPU_TIME_BUDGET / 60:g} on a CPU, {GPU_TIME_BUDGET / 60:g} on a "
        "GPU)",
    )
    run.add_argument("--seed", type=int, default=defaults.seed, help="seed of PCA, Harmony, CellPainTR and UMAP")
    run.add_argument("--n-jobs", type=int, default=defaults.n_jobs, help="workers of the benchmark's classifiers")
    run.add_argument("--no-progress", action="store_true", help="hide progress bars (the log stays)")
    run.add_argument("--debug", action="store_true", help="show the full traceback of an error in the input too")
    return parser


def _option(name: str) -> str:
    """The command-line option of a :class:`ReportConfig` field: ``batch_key`` -> ``--batch-key``."""
    return "--" + name.replace("_", "-")


def _methods_argument(text: str) -> tuple[str, ...]:
    try:
        return parse_methods(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


class Terminated(BaseException):
    """Raised in the main thread when the process receives SIGTERM, so that a run stops as on Ctrl-C."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cpembed`` and return the exit status.

    0: the report was written. 2: bad arguments or input, one line on stderr (``--debug``: the traceback). 130 or
    143: interrupted by Ctrl-C or SIGTERM (128 + the signal). Any other error is a failure of the run and propagates
    with its traceback (status 1). The report folder is written whole at the end, so every run that does not exit
    with 0 leaves it as it was.
    """
    args = build_parser().parse_args(argv)
    _configure_logging()
    try:
        with _sigterm_raises():
            return _run(args)
    except (KeyboardInterrupt, Terminated) as stop:
        signum, what = (
            (signal.SIGTERM, "stopped by SIGTERM") if isinstance(stop, Terminated) else (signal.SIGINT, "interrupted")
        )
        print(f"cpembed: {what}; no report was written ({args.out} is as it was).", file=sys.stderr)
        return 128 + signum


def _run(args: argparse.Namespace) -> int:
    from ._report import check_output_folder, prepare_report, write_report

    try:
        check_output_folder(args.out)
        adata, config = _load(args)
        prepared = prepare_report(adata, config)
    except USER_ERRORS as error:
        if args.debug:
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
        print(f"cpembed: error: {' '.join(str(message).split())}", file=sys.stderr)
        return USAGE_ERROR
    table = write_report(prepared, config, args.out)
    print(table.round(3).to_string())
    print(f"Report written to {args.out}")
    return 0


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM (a cluster's time limit, ``kill``) raises :class:`Terminated` in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _load(args: argparse.Namespace):
    """Read the input (or the bundled BBBC021 profiles) and turn the arguments into a :class:`ReportConfig`."""
    import cpembed as cpe

    if args.input is None:
        adata = cpe.datasets.bbbc021()
        concentration_key = args.concentration_key or BBBC021_CONCENTRATION_KEY
    else:
        adata = _read_input(args.input)
        concentration_key = args.concentration_key
    keys = _keys(args, notify=args.input is not None)
    methods = args.methods or (*(name for name in METHODS if name != "cwamsn"), *(("cwamsn",) if args.images else ()))
    time_budget = None if args.time_budget is None else 60 * args.time_budget
    config = ReportConfig(
        **keys,
        concentration_key=concentration_key,
        methods=methods,
        images=args.images,
        seed=args.seed,
        n_jobs=args.n_jobs,
        progress=not args.no_progress,
        cellpaintr=CellPainTRSettings(time_budget=time_budget),
    )
    if args.quick:
        tiny = replace(CellPainTRSettings.tiny(), time_budget=time_budget)
        config = replace(config, cellpaintr=tiny, cwamsn=CWAMSNSettings.tiny(), null_size=QUICK_NULL_SIZE)
    logger.info("input: %d wells × %d features", adata.n_obs, adata.n_vars)
    return adata, config


def _keys(args: argparse.Namespace, *, notify: bool) -> dict[str, str | None]:
    """The key options as :class:`ReportConfig` fields; an omitted one takes BBBC021's name (a notice if ``notify``)."""
    defaults = ReportConfig()
    keys = {}
    for name in KEY_OPTIONS:
        given = getattr(args, name)
        if given is None:
            given = getattr(defaults, name)
            if notify:
                logger.warning(
                    "%s not given: using %r, the bundled BBBC021 data's column; pass %s to name your table's column.",
                    _option(name),
                    given,
                    _option(name),
                )
        keys[name] = _optional(given)
    return keys


def _read_input(path: Path):
    import anndata as ad

    import cpembed as cpe
    from cpembed._validation import reading_file

    if not path.is_file():
        raise FileNotFoundError(f"Input file {path} does not exist.")
    if not path.name.lower().endswith(INPUT_SUFFIXES):
        raise ValueError(f"Cannot read {path.name!r}: the input must be one of {', '.join(INPUT_SUFFIXES)}.")
    if path.name.lower().endswith(".h5ad"):
        with reading_file(path, "an AnnData .h5ad file"):
            return ad.read_h5ad(path)
    return cpe.io.read_profiles(path)


def _optional(key: str | None) -> str | None:
    return None if key is None or key.lower() == "none" else key


def _configure_logging() -> None:
    """Log cpembed's steps (INFO, with their durations) through rich, once per process."""
    from rich.logging import RichHandler

    package_logger = logging.getLogger("cpembed")
    package_logger.setLevel(logging.INFO)
    if not any(isinstance(handler, RichHandler) for handler in package_logger.handlers):
        package_logger.addHandler(RichHandler(show_path=False, log_time_format="[%X]"))


if __name__ == "__main__":
    sys.exit(main())
