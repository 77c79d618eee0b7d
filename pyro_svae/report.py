"""A one-page Markdown report of a fitted model, with its figures and tables, for pipelines.

:func:`write_report` reads a fitted :class:`~pyro_svae.svae.SVAE` (its history, target calls, gene
programs and a posterior predictive check on a sample of cells) and writes into a folder:
``report.md``, ``targets.csv``, ``inclusion_probabilities.csv``, ``gene_programs.csv`` and the
figures as PNG. It never trains; the command line (:mod:`pyro_svae.cli`) calls it after a fit and
for a saved model. Figures are drawn on :class:`matplotlib.figure.Figure` objects where the plot
takes an ``ax``, so no display (and no pyplot backend) is needed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import pyro

from . import interpretation, pl, warm_start

__all__ = ["write_report", "restored_epoch", "REPORT_FILES"]

logger = logging.getLogger(__name__)

#: The files :func:`write_report` may write into its folder.
REPORT_FILES = ("report.md", "targets.csv", "inclusion_probabilities.csv", "gene_programs.csv", "training.png",
                "targets.png", "shifts.png", "gene_programs.png", "ppc.png")
#: Calls listed in report.md; the CSV files hold all of them.
MAX_TABLE_ROWS = 40


def restored_epoch(model) -> Optional[int]:
    """The epoch whose parameters the model holds, when the model or its history records it.

    Looks at a ``restored_epoch`` (or ``best_epoch``) attribute of the model, the same key in
    ``model.history.attrs``, and a boolean ``restored`` column of ``model.history``; ``None``
    when none of them says.
    """
    history = model.history
    for value in (getattr(model, "restored_epoch", None), getattr(model, "best_epoch", None),
                  history.attrs.get("restored_epoch"), history.attrs.get("best_epoch")):
        if value is not None and not (isinstance(value, float) and np.isnan(value)):
            return int(value)
    if "restored" in history.columns and history["restored"].astype(bool).any():
        return int(history.loc[history["restored"].astype(bool), "epoch"].iloc[-1])
    return None


def _cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(frame: pd.DataFrame, floats: str = "{:.3f}") -> str:
    """A Markdown table (the index is not shown)."""
    def fmt(v):
        return floats.format(v) if isinstance(v, (float, np.floating)) else _cell(v)

    lines = ["| " + " | ".join(_cell(c) for c in frame.columns) + " |", "|" + "---|" * frame.shape[1]]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def _short(value, n: int = 10) -> str:
    """A readable, bounded rendering of a filtering-record entry."""
    if isinstance(value, pd.DataFrame):
        return f"a table of {len(value)} rows ({', '.join(map(str, value.columns[:6]))})"
    if isinstance(value, dict):
        return f"{len(value)} entries: " + ", ".join(f"{k}={_short(v, 3)}" for k, v in list(value.items())[:n])
    if isinstance(value, np.ndarray):
        value = value.tolist() if value.ndim else value.item()
    if isinstance(value, (list, tuple)):
        shown = ", ".join(map(str, value[:n]))
        return f"{len(value)}: {shown}" + (", ..." if len(value) > n else "") if value else "none"
    if isinstance(value, (float, np.floating)):
        return f"{value:g}"
    return str(value)


def _save(result, path: Path) -> Path:
    """Save the figure of a plot's return value (Axes, list of Axes or Figure) and close it."""
    first = result[0] if isinstance(result, (list, tuple, np.ndarray)) else result
    figure = first if hasattr(first, "savefig") else first.figure
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(figure)  # a no-op for a Figure that pyplot does not manage
    return path


def _optional_plot(name: str, path: Path, *arguments) -> Optional[Path]:
    """Draw ``pl.<name>`` when this version of :mod:`pyro_svae.pl` has it, trying each argument
    (e.g. a table, then the model) in turn; a failing optional plot is logged, not raised."""
    plot = getattr(pl, name, None)
    if plot is None:
        return None
    error = None
    for argument in arguments:
        try:
            return _save(plot(argument), path)
        except Exception as err:  # noqa: BLE001 -- an optional figure must not lose a finished fit
            error = err
    logger.warning("pl.%s failed (%s: %s); the report goes on without %s.", name, type(error).__name__, error, path.name)
    return None


def _data_section(model, adata, source) -> list:
    c = model.config
    labels = adata.obs[c.perturbation_key].astype(str)
    sizes = labels[labels != c.control].value_counts() if c.control is not None else labels.value_counts()
    n_control = int((labels == c.control).sum()) if c.control is not None else 0
    lines = ["## Input", "",
             f"- file: `{source}`" if source else "- file: (an AnnData in memory)",
             f"- {adata.n_obs} cells x {adata.n_vars} genes; counts from "
             + (f"`layers[{c.layer!r}]`" if c.layer else "`X`"),
             f"- perturbations: `obs[{c.perturbation_key!r}]`, {len(model.perturbation_names)} perturbations; "
             + (f"control {c.control!r} ({n_control} cells)" if c.control is not None else "no control cells"),
             f"- cells per label (controls aside): min {sizes.min()}, median {int(sizes.median())}, max {sizes.max()}"
             if len(sizes) else "- no perturbed cells",
             f"- batches: `obs[{c.batch_key!r}]`, {len(model.batch_names)} batches" if c.batch_key else "- batches: none"]
    record = adata.uns.get("pyro_svae_filtering")
    lines += ["", "### Data filtering", ""]
    if record is None:
        lines.append("No filtering record (`uns['pyro_svae_filtering']`): the file was used as given.")
    else:
        lines += [f"- {key}: {_short(value)}" for key, value in dict(record).items()]
    return lines


def _model_section(model, device) -> list:
    c, t = model.config, model.train_config
    history = model.history
    options = ", ".join(f"{k}={v}" for k, v in c.prior_options.items()) or "defaults"
    lines = ["## Model", "",
             f"- prior `{c.prior}` ({options}), likelihood `{c.likelihood}`, {c.n_latent} latents, "
             f"networks of {c.n_layers} x {c.n_hidden} hidden units{'' if c.encoder == 'counts' else f', encoder `{c.encoder}`'}",
             f"- batch size {t.batch_size}, up to {t.max_epochs} epochs, learning rates {t.lr:g} / {t.prior_lr:g} "
             f"(networks / prior{'' if t.lr_decay == 1 else f', decaying to {t.lr_decay:g} of that'}){'' if not t.weight_decay else f', weight decay {t.weight_decay:g}'}, KL warm-up {t.kl_warmup_epochs} epochs, validation fraction {t.validation_fraction:g}, "
             f"early stopping {'on, patience ' + str(t.patience) if t.early_stopping else 'off'}, seed {t.seed}, "
             f"device {device}",
             "", "## Training", "", "![training curve](training.png)", ""]
    if model.restarts is not None:
        elbos = ", ".join(f"{int(r.seed)}: {r.elbo:.3f}" for r in model.restarts.itertuples())
        lines += [f"Kept the fit from seed {t.seed}, the highest ELBO per cell of {len(model.restarts)} restarts "
                  f"(seed: ELBO; {elbos}).", ""]
    if len(history):
        last = history.iloc[-1]
        line = f"{len(history)} epochs run (of at most {t.max_epochs}); last train ELBO per cell {last['train_elbo']:.3f}"
        if pd.notna(last.get("validation_elbo", np.nan)):
            line += f", validation {last['validation_elbo']:.3f}"
        epoch, final = restored_epoch(model), int(history["epoch"].iloc[-1])
        if epoch is None:
            line += ". The history does not record which epoch's parameters the model kept."
        elif epoch == final:
            line += f". The model holds the parameters of the last epoch, {epoch}."
        else:
            line += f". The model holds the parameters of epoch {epoch}, the best smoothed validation ELBO."
        lines.append(line)
        lines += _rotation_lines(history)
    else:
        lines.append("No training history recorded.")
    return lines


def _rotation_lines(history) -> list:
    """The check for mixed latents on the settled sparse stage (:func:`pyro_svae.warm_start.checked_rotation`)."""
    closeness = warm_start.rotation_closeness(history)
    if closeness is None:
        return []
    verdict = ("rotated again and its prior refitted" if warm_start.was_rerotated(history) else "left as it was")
    return ["", f"Mixed-latent check: the settled fit's mean latents per perturbation were sparsest in axes "
                f"{np.degrees(np.arccos(min(closeness, 1.0))):.0f} degrees from the model's (closeness {closeness:.3f}; "
                f"rotated again below {warm_start.REROTATE_BELOW}): {verdict}."]


def _targets_section(calls, programs, fdr, figures) -> list:
    lines = ["## Target calls", "",
             f"{len(calls)} (perturbation, latent) pairs called at a Bayesian FDR of {fdr:g}"
             + (f" (smallest PIP called {calls.attrs['threshold']:.3f}, expected FDP {calls.attrs['expected_fdp']:.3f}); "
                "all of them in `targets.csv`" if len(calls) else "") + "; every PIP in `inclusion_probabilities.csv`.",
             ""]
    if len(calls):
        lines += [_table(calls.head(MAX_TABLE_ROWS)), ""]
        if len(calls) > MAX_TABLE_ROWS:
            lines += [f"({len(calls) - MAX_TABLE_ROWS} more in `targets.csv`.)", ""]
    lines += [line for name in ("targets", "shifts") if name in figures for line in (f"![{name}]({name}.png)", "")]
    lines += ["### Top genes of the targeted latents", ""]
    figure = ["", "![gene programs](gene_programs.png)"] if "gene_programs" in figures else []
    if not len(calls):  # the figure of every latent's genes is still written, and linked
        return lines + ["No latent carries a target at this FDR."] + figure
    rows = []
    for latent in sorted(calls["latent"].unique()):
        genes = interpretation.top_genes(programs, latent, n=10)
        by = calls.loc[calls["latent"] == latent, "perturbation"]
        rows.append({"latent": latent, "targeted by": ", ".join(map(str, by[:8])) + (", ..." if len(by) > 8 else ""),
                     "top genes (d log mean / d z)": ", ".join(f"{g} ({e:+.2f})" for g, e in
                                                              zip(genes["gene"], genes["effect"]))})
    return lines + [_table(pd.DataFrame(rows)), "", "All genes of every latent: `gene_programs.csv`."] + figure


def _ppc_section(summary, n_cells, n_total, num_samples) -> list:
    coverage = summary.groupby("statistic", sort=False)["inside"].agg(["mean", "size"]).reset_index()
    coverage.columns = ["statistic", "coverage", "items"]
    return ["## Posterior predictive check", "",
            f"{num_samples} replicates of {n_cells} of the {n_total} cells; the share of items whose central 90% "
            "predictive interval covers the observed value (about 0.9 for a calibrated model):", "",
            _table(coverage), "", "![posterior predictive check](ppc.png)"]


def write_report(model, adata, out, *, fdr: float = 0.1, source=None, ppc_cells: int = 1000, ppc_samples: int = 50,
                 seed: int = 0) -> Path:
    """Write ``report.md``, its figures and tables for a fitted model into folder ``out``.

    Parameters
    ----------
    model : pyro_svae.SVAE
        A fitted (or loaded) model; only read.
    adata : anndata.AnnData
        The screen it was fitted on (or one with its genes and labels); not modified.
    out : path
        The folder (created if missing); files of the same names are replaced.
    fdr : float
        Bayesian false discovery rate of the target calls.
    source : str, optional
        Where ``adata`` was read from, for the report's header.
    ppc_cells, ppc_samples : int
        The posterior predictive check replicates ``ppc_samples`` times a random sample of at most
        ``ppc_cells`` cells (its memory is ``ppc_samples x ppc_cells x genes`` counts).
    seed : int
        Seeds the draws of the tables and the sample of cells, so a report is reproducible.

    Returns
    -------
    pathlib.Path
        The path of ``report.md``.
    """
    from matplotlib.figure import Figure

    if not 0.0 <= fdr < 1.0:
        raise ValueError(f"Expected fdr in [0, 1), but got {fdr!r}.")
    if ppc_cells < 1 or ppc_samples < 1:
        raise ValueError(f"Expected ppc_cells and ppc_samples >= 1, but got {ppc_cells!r} and {ppc_samples!r}.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figures = {}
    pips = model.intervention_targets(seed=seed)
    pyro.set_rng_seed(seed)  # target_calls draws as intervention_targets(seed=seed) did: the same PIPs
    calls = model.target_calls(fdr=fdr)
    calls.to_csv(out / "targets.csv", index=False)
    pips.to_csv(out / "inclusion_probabilities.csv")
    logger.info("%d targets called at FDR %g.", len(calls), fdr)
    programs = model.gene_programs(adata)
    programs.to_csv(out / "gene_programs.csv")

    figure = Figure(figsize=(5, 3.5))
    figures["training"] = _save(pl.training(model, ax=figure.subplots()), out / "training.png")
    figure = Figure(figsize=(0.4 * pips.shape[1] + 2.5, min(0.18 * pips.shape[0] + 1.5, 40)))
    figures["targets"] = _save(pl.targets(pips, ax=figure.subplots()), out / "targets.png")
    for name, arguments in (("shifts", (model,)), ("gene_programs", (programs, model))):
        path = _optional_plot(name, out / f"{name}.png", *arguments)
        if path is not None:
            figures[name] = path

    rng = np.random.default_rng(seed)
    cells = np.sort(rng.choice(adata.n_obs, size=min(ppc_cells, adata.n_obs), replace=False))
    logger.info("Posterior predictive check: %d replicates of %d cells.", ppc_samples, len(cells))
    summary = model.ppc_summary(adata, num_samples=ppc_samples, cells=cells, seed=seed)
    figure = Figure(figsize=(10.8, 3.4))
    figures["ppc"] = _save(pl.ppc(summary, ax=figure.subplots(1, 3)), out / "ppc.png")

    from . import __version__

    lines = ["# pyro_svae report", "", f"Sparse mechanism shift VAE (pyro_svae {__version__}). "
             "Tables: `targets.csv`, `inclusion_probabilities.csv`, `gene_programs.csv`.", ""]
    lines += _data_section(model, adata, source) + [""]
    lines += _model_section(model, model.device) + [""]
    lines += _targets_section(calls, programs, fdr, figures) + [""]
    lines += _ppc_section(summary, len(cells), adata.n_obs, ppc_samples) + [""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    logger.info("Wrote %s.", path)
    return path
