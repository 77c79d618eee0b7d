"""The command line: ``pyro-svae fit`` (or ``python -m pyro_svae fit``) and ``pyro-svae report``.

``fit`` reads a screen from an ``.h5ad`` file, fits a sparse mechanism shift VAE
(:func:`pyro_svae.fit`) and writes the model, the AnnData with the results, the tables, the
figures and a one-page ``report.md`` into an output folder (:func:`pyro_svae.report.write_report`).
``report`` writes the same report for a model saved earlier. Log messages go to stderr, the paths
written to stdout (one per line). Exit codes: 0 success, 1 a data error (a missing file or
column, a wrong control label, an existing output folder), 2 a usage error (argparse's).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import traceback
import warnings
from pathlib import Path

import anndata
import torch

from . import api
from .likelihoods import LIKELIHOODS
from .priors import PRIORS
from .report import REPORT_FILES, write_report

__all__ = ["main"]

logger = logging.getLogger(__name__)

PRIOR_NAMES, LIKELIHOOD_NAMES = tuple(PRIORS), tuple(LIKELIHOODS)
#: what ``fit`` writes besides the report's files
FIT_OUTPUTS = ("model", "results.h5ad") + REPORT_FILES


class DataError(Exception):
    """A problem with the input or the output folder (exit code 1)."""


def _positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, but got {text!r}")
    return int(text)


def _epochs(text: str):
    return "auto" if text == "auto" else _positive_int(text)


def _fdr(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), but got {text!r}")
    return value


def _device(text: str) -> str:
    if text != "auto":
        try:
            torch.device(text)
        except RuntimeError:
            raise argparse.ArgumentTypeError(f"expected cpu, cuda, cuda:N or auto, but got {text!r}") from None
    return text


def _option(text: str):
    """``key=value`` -> ``(key, value)``, the value read as JSON: a number, true/false, null or a "string"."""
    key, sep, value = text.partition("=")
    try:
        if sep and key.strip():
            return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        pass
    raise argparse.ArgumentTypeError(f"expected key=value with a JSON value (a number, true, false, null or a "
                                     f"quoted string), e.g. min_shift=1.0, but got {text!r}")


def _common(parser: argparse.ArgumentParser) -> None:
    """Options of both subcommands: the report and how to run."""
    parser.add_argument("--fdr", type=_fdr, default=0.1, help="Bayesian FDR of the target calls (default: 0.1)")
    parser.add_argument("--device", type=_device, default="auto",
                        help="cpu, cuda, cuda:N or auto: CUDA when available (default: auto)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the fit and the report's draws (default: 0)")
    parser.add_argument("--ppc-cells", type=_positive_int, default=1000, metavar="N",
                        help="cells sampled for the posterior predictive check (default: 1000)")
    parser.add_argument("--ppc-samples", type=_positive_int, default=50, metavar="N",
                        help="replicates per cell in the posterior predictive check (default: 50)")
    parser.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                        help="CPU threads for torch (default: torch's own choice, usually all cores)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty --out, replacing pyro-svae's outputs there (default: refuse)")
    parser.add_argument("--quiet", action="store_true", help="only warnings and errors on stderr, no progress bar")
    parser.add_argument("--traceback", action="store_true", help="on an error, show the Python traceback too")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyro-svae", description="Sparse mechanism shift VAEs for single-cell perturbation screens.",
        epilog="Exit codes: 0 success, 1 data error (missing file or column, wrong control label, existing --out), "
               "2 usage error. Documentation: docs/cli.md.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{fit,report}")
    fit = commands.add_parser(
        "fit", help="fit a model to a screen and write model, results and report",
        description="Fit a sparse mechanism shift VAE to the raw counts of a screen (.h5ad) and write into --out: "
                    "model/, results.h5ad (obsm['X_svae'], uns['svae']), targets.csv, inclusion_probabilities.csv, "
                    "gene_programs.csv, figures (PNG) and report.md. The input file is never modified.")
    fit.add_argument("input", metavar="SCREEN.h5ad", help="AnnData file of raw counts (cells x genes)")
    fit.add_argument("--perturbation-key", required=True, metavar="KEY",
                     help="required: column of obs with each cell's perturbation label ('A+B': a combination)")
    control = fit.add_mutually_exclusive_group(required=True)
    control.add_argument("--control", metavar="LABEL", help="required unless --no-control: the label of the control cells")
    control.add_argument("--no-control", action="store_true", help="the screen has no control cells")
    fit.add_argument("--batch-key", metavar="KEY", help="column of obs with a batch (e.g. replicate) (default: none)")
    fit.add_argument("--layer", metavar="NAME", help="take the counts from layers[NAME] (default: X)")
    fit.add_argument("--separator", default="+", metavar="SEP",
                     help="joins the members of a combination label; '' for none (default: '+')")
    fit.add_argument("--allow-non-integer", action="store_true", help="accept non-integer counts (default: refuse)")
    fit.add_argument("--n-latent", type=_positive_int, default=10, metavar="K", help="latent dimensions (default: 10)")
    fit.add_argument("--prior", choices=PRIOR_NAMES, default="spike_and_slab", metavar="NAME",
                     help=f"prior on the shifts, one of {', '.join(PRIOR_NAMES)} (default: spike_and_slab)")
    fit.add_argument("--prior-option", type=_option, action="append", default=[], metavar="KEY=VALUE",
                     help="an option of the prior (a JSON value), repeatable, e.g. --prior-option min_shift=1.0 "
                          "(default: the prior's own)")
    fit.add_argument("--likelihood", choices=LIKELIHOOD_NAMES, default="nb",
                     help=f"count likelihood: {', '.join(LIKELIHOOD_NAMES)} (default: nb)")
    fit.add_argument("--max-epochs", type=_epochs, default="auto", metavar="N|auto",
                     help="epochs, or auto: about 28,000 steps, 50 to 2,000 epochs (default: auto)")
    fit.add_argument("--batch-size", type=_positive_int, default=256, metavar="N", help="cells per step (default: 256)")
    fit.add_argument("--restarts", type=_positive_int, default=1, metavar="N",
                     help="fit from seeds SEED to SEED+N-1, keep the highest ELBO; N times the time (default: 1)")
    fit.add_argument("--n-hidden", type=_positive_int, default=128, help=argparse.SUPPRESS)
    fit.add_argument("--n-layers", type=_positive_int, default=2, help=argparse.SUPPRESS)
    fit.add_argument("--out", metavar="DIR", help="output folder (default: INPUT-NAME_svae in the current folder)")
    _common(fit)
    report = commands.add_parser(
        "report", help="write the report of a saved model",
        description="Write report.md, its figures and tables for a model saved by 'pyro-svae fit' (its model/ "
                    "folder) and the screen it was fitted on.")
    report.add_argument("model", metavar="MODEL_DIR", help="a folder written by SVAE.save (e.g. results/model)")
    report.add_argument("input", metavar="SCREEN.h5ad", help="the screen (or results.h5ad) with the model's genes")
    report.add_argument("--out", metavar="DIR", required=True, help="output folder")
    _common(report)
    return parser


def _check_input(path: Path) -> None:
    if not path.exists():
        raise DataError(f"Input file {str(path)!r} does not exist.")
    if not path.is_file():
        raise DataError(f"Input {str(path)!r} is not a file; expected an .h5ad file.")


def _read(path: Path):
    try:
        adata = anndata.read_h5ad(path)
    except Exception as err:  # h5py and anndata raise OSError, KeyError, ... for a file that is not an AnnData
        raise DataError(f"Could not read {str(path)!r} as an .h5ad AnnData file ({type(err).__name__}: {err}).") from err
    logger.info("Read %s: %d cells x %d genes.", path, adata.n_obs, adata.n_vars)
    return adata


def _prepare_out(out: Path, overwrite: bool, inputs, outputs) -> None:
    """Refuse a non-empty folder without ``overwrite``; never let an output replace an input."""
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {str(out)!r} is a file; expected a folder.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DataError(f"--out {str(out)!r} exists and is not empty; pass --overwrite to replace its outputs "
                        "or choose another folder.")
    for path in inputs:
        for name in outputs:
            target = (out / name).resolve()
            if path.resolve() == target or target in path.resolve().parents:
                raise DataError(f"--out {str(out)!r} would overwrite the input {str(path)!r} ({name}); "
                                "choose another folder.")
    out.mkdir(parents=True, exist_ok=True)


def _clear_outputs(out: Path, outputs) -> None:
    """Remove the outputs of an earlier run (only pyro-svae's own names) before writing new ones."""
    for name in outputs:
        path = out / name
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def _check_device(device: str) -> None:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DataError(f"--device {device} was asked for, but CUDA is not available here; use --device cpu or auto.")


def _report_options(args) -> dict:
    return dict(fdr=args.fdr, source=str(args.input), ppc_cells=args.ppc_cells, ppc_samples=args.ppc_samples,
                seed=args.seed)


def _fit(args) -> list:
    source = Path(args.input)
    out = Path(args.out) if args.out else Path(f"{source.stem}_svae")
    _check_device(args.device)
    _check_input(source)  # before touching --out, so a typo leaves nothing behind
    _prepare_out(out, args.overwrite, [source], FIT_OUTPUTS)
    adata = _read(source)
    model = api.fit(
        adata, args.perturbation_key, None if args.no_control else args.control, layer=args.layer,
        batch_key=args.batch_key, separator=args.separator or None, allow_non_integer=args.allow_non_integer,
        n_latent=args.n_latent, prior=args.prior, prior_options=dict(args.prior_option), likelihood=args.likelihood,
        n_hidden=args.n_hidden, n_layers=args.n_layers, batch_size=args.batch_size, max_epochs=args.max_epochs,
        seed=args.seed, n_restarts=args.restarts, device=args.device, progress=not args.quiet)
    _clear_outputs(out, FIT_OUTPUTS)
    model.save(out / "model")
    logger.info("Saved the model to %s; writing the results.", out / "model")
    model.write(adata)  # into the AnnData read for this run: the input file itself is never written
    adata.write_h5ad(out / "results.h5ad")
    try:
        write_report(model, adata, out, **_report_options(args))
    except Exception:
        logger.error("The fit finished and the model is saved in %s, but the report failed; rerun it with "
                     "'pyro-svae report %s %s --out %s --overwrite'.", out / "model", out / "model", source, out)
        raise
    return [out / name for name in FIT_OUTPUTS if (out / name).exists()]


def _report(args) -> list:
    _check_device(args.device)
    model_dir, source, out = Path(args.model), Path(args.input), Path(args.out)
    if not (model_dir / "config.json").is_file():
        raise DataError(f"Model folder {str(model_dir)!r} has no config.json; expected a folder written by "
                        "'pyro-svae fit' (its model/ folder) or SVAE.save.")
    _check_input(source)
    _prepare_out(out, args.overwrite, [source, model_dir], REPORT_FILES)
    adata = _read(source)
    model = api.load(model_dir, adata=adata, device=args.device)
    _clear_outputs(out, REPORT_FILES)
    write_report(model, adata, out, **_report_options(args))
    return [out / name for name in REPORT_FILES if (out / name).exists()]


def _message(error: BaseException) -> str:
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)  # no KeyError quotes
    return text.split("\nTrace Shapes:")[0]  # Pyro appends the trace's shapes to errors raised inside a model


def main(argv=None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``) and return the exit code.

    Parameters
    ----------
    argv : list of str, optional
        The arguments, e.g. ``["fit", "screen.h5ad", "--perturbation-key", "guide", "--control", "NT"]``.

    Returns
    -------
    int
        0 on success (and for ``--help``), 1 for a data error (its message on stderr, no
        traceback), 2 for a usage error (argparse's message and usage on stderr).
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) and usage errors (2)
        return int(exit_.code or 0)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    package, showwarning = logging.getLogger("pyro_svae"), warnings.showwarning
    level = package.level
    package.addHandler(handler)
    package.setLevel(logging.WARNING if args.quiet else logging.INFO)
    # warnings (e.g. a fit that used every epoch) become log lines on stderr
    warnings.showwarning = lambda message, category, *_, **__: logger.warning("%s: %s", category.__name__, message)
    import matplotlib

    matplotlib.use("Agg")  # no display: figures go to PNG files
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        paths = _fit(args) if args.command == "fit" else _report(args)
    except (DataError, ValueError, KeyError, TypeError, OSError, ArithmeticError) as error:
        # the API's own messages (missing column, wrong control, bad option, diverged training)
        if args.traceback:
            traceback.print_exc(file=sys.stderr)
        sys.stderr.write(f"pyro-svae {args.command}: error: {_message(error)}\n")
        return 1
    finally:
        warnings.showwarning = showwarning
        package.removeHandler(handler)
        package.setLevel(level)
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
