"""How much the counts say about the latents, per grid screen: the posterior under the true model.

    python benchmarks/oracle_ceiling.py                       # every grid screen, seed 0 (~15 min on 2 cores)
    python benchmarks/oracle_ceiling.py --fit latents20 ...   # and fits of the defaults (~3 min each)
    python benchmarks/oracle_ceiling.py --gap paper ...       # ELBO and evidence, truth and fit (~5-9 min each)

For each screen (seed 0) :func:`pyro_svae.datasets.oracle.true_posterior` computes each cell's
posterior mean of ``z`` under the simulator's own decoder, shifts, dispersion and library sizes,
given the cell's counts and perturbation label. ``corr(E[z_k | x, a], z_k)`` is the largest
correlation with ``z_k`` any function of the data reaches, so the mean over latents (``oracle``)
bounds every method's latent MCC; ``label_only`` is the MCC of the shift of each cell's label
alone (no counts), ``oracle_map`` that of the per-cell MAP. Computed on 5,000 cells per screen
(seeded; all cells where fewer). The defaults' MCC (``fit``, the mean over the fits of the seed-0
screen in ``recovery_grid_runs.jsonl``) and the MCC of the encoder trained on the true latents
(``supervised``, ``ceiling_runs.jsonl``) are joined from the committed runs; ``fit / oracle`` is
the share of the bound a fit reaches.

``--fit``: ``fit``'s defaults on the seed-0 screen (fit seed 0, one thread per fit), scored on the
same cells: ``encoder`` is the MCC of ``get_latent`` (the encoder's mean, which sees the counts
only), ``fitted_posterior`` that of the posterior mean under the *fitted* model given the counts
and the label (self-normalised importance sampling, 200 draws of the encoder's ``q(z | x)`` and of
the global sites, the masks summed out as in :mod:`pyro_svae.heldout`): how much of the gap to the
bound better inference in the fitted model would close.

``--evidence``: does the likelihood prefer the truth to the fit? ``fit``'s defaults on the seed-0
screen less 1,000 random cells (fit seed 0); on those held-out cells and on 1,000 of the training
cells, the log evidence ``log p(x | a)`` per cell under the true model
(``true_posterior(library="observed")``: library sizes as a fitted model sees them, each cell's
total count) beside the fit's IWELBO (1,000 samples; ``fit_iwelbo_gain``: what it gained over 100
samples, a gauge of its remaining slack), and the MCC of each. On held-out cells the truth is
ahead of any model learned from finitely many cells. On the training cells, ``train_difference``
> 0 beyond that slack says the fit stopped short of the likelihood's optimum (an optimisation
shortfall); <= 0 says the fit explains its own cells as well as the truth does while recovering
less, so a better optimiser of the same objective would not recover more. ``--steps-factor F``
refits with ``F`` times ``max_epochs="auto"`` (rows kept apart, shown beside the others).

``--gap``: does the ELBO, the objective a fit maximises, prefer the truth? On the ``--evidence`` fit's
1,000 training cells, the truth's ELBO with each cell's best mean-field Gaussian (``true_elbo``) beside
the fit's, with its encoder (10 draws) and with each cell's own mean-field Gaussian (``fit_best_elbo``:
the same family as the truth's, no amortisation gap), and each one's log evidence (the truth's, the
fit's IWELBO). A truth whose log evidence is higher but whose ELBO is not is one the objective itself
ranks with or below the fit: the mean-field gap, not the optimiser, decides there. ``--gap-full``: the
truth's ELBO on the same cells with each cell's best full-covariance Gaussian (no fit; ``truth_gap_full``).

Writes ``benchmarks/results/oracle_ceiling.md`` and ``.png``; rows are kept in
``oracle_ceiling_runs.jsonl`` (``_fits_runs``, ``_evidence_runs``, ``_gap_runs``, ``_gap_full_runs``; a re-run
skips the screens already there).
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path

import numpy as np
import pandas as pd

from recovery_grid import RESULTS, markdown, read_runs, run_screens

N_CELLS = 5000


def oracle_row(screen: str) -> dict:
    import torch

    from pyro_svae import metrics
    from pyro_svae.datasets import grid_screens, simulate_grid_screen
    from pyro_svae.datasets.grid import part_of
    from pyro_svae.datasets.oracle import true_posterior, true_prior_mean

    torch.set_num_threads(1)
    adata = simulate_grid_screen(screen, seed=0)
    adata = adata[_cells(adata)].copy()
    start = time.perf_counter()
    posterior = true_posterior(adata)
    z = adata.obsm["z_true"]
    label = true_prior_mean(adata)
    label = label + 1e-9 * np.random.default_rng(0).normal(size=label.shape)  # a latent no label shifts
    return {"screen": screen, "part": part_of(screen), "n_latent": grid_screens("all")[screen]["n_latent"],
            "cells": adata.n_obs, "oracle": metrics.mcc(posterior.mean, z), "oracle_map": metrics.mcc(posterior.map, z),
            "label_only": metrics.mcc(label, z), "median_ess": float(np.median(posterior.ess)),
            "seconds": time.perf_counter() - start}


def _cells(adata):
    if adata.n_obs > N_CELLS:
        return np.sort(np.random.default_rng(0).choice(adata.n_obs, N_CELLS, replace=False))
    return np.arange(adata.n_obs)


def fitted_posterior_mean(model, adata, n_samples: int = 200, seed: int = 0) -> np.ndarray:
    """Posterior mean of ``z`` under the fitted model given each cell's counts and label ``[n_cells, K]``."""
    import torch

    from pyro_svae.guide import encode
    from pyro_svae.heldout import log_prior_z
    from pyro_svae.likelihoods import count_distribution, dispersion_param
    from pyro_svae.posterior import draw_globals
    from pyro_svae.runtime import per_cell

    screen, components = model._read(adata), model.components
    nets = components.nets
    with model._seeded(seed):
        draws = draw_globals(components, n_samples, model.device)

        def mean(batch):
            # q(z | x), or a conjugate encoder's q(z | x, a) at each draw's shifts: [S, B, K]
            q = encode(nets, batch, draws.delta).expand((n_samples, batch["library"].shape[0]))
            z = q.sample()  # [S, B, K]
            counts = count_distribution(nets.decoder, components.likelihood, z, batch["batch"], batch["library"],
                                        dispersion_param(components.likelihood, nets.n_genes))
            log_w = (counts.log_prob(batch["counts"]).sum(-1) + log_prior_z(z, draws, batch["perturbations"])
                     - q.log_prob(z))
            return (torch.softmax(log_w, 0)[..., None] * z).sum(0)

        return per_cell(model._minibatches(screen, 64), screen.n_cells, mean)


def fit_row(screen: str) -> dict:
    import torch

    import pyro_svae
    from pyro_svae import metrics
    from pyro_svae.datasets import grid_screens, simulate_grid_screen

    torch.set_num_threads(1)
    spec = grid_screens("all")[screen]
    adata = simulate_grid_screen(screen, seed=0)
    model = pyro_svae.fit(adata, n_latent=spec["n_latent"], control="control" if spec["n_control"] else None, seed=0,
                          progress=False)
    cells = adata[_cells(adata)].copy()
    z = cells.obsm["z_true"]
    return {"screen": screen, "encoder": metrics.mcc(model.get_latent(cells), z),
            "fitted_posterior": metrics.mcc(fitted_posterior_mean(model, cells), z)}


N_HELD_OUT = 1000


def _held_out_cells(screen: str):
    """``(adata, held, train)``: the seed-0 screen, its 1,000 held-out cells (mask) and the positions of 1,000
    of the others (the ``--evidence`` fit's training cells)."""
    from pyro_svae.datasets import simulate_grid_screen

    adata = simulate_grid_screen(screen, seed=0)
    held = np.zeros(adata.n_obs, bool)
    held[np.random.default_rng(0).choice(adata.n_obs, N_HELD_OUT, replace=False)] = True
    train = np.flatnonzero(~held)[np.random.default_rng(1).choice(int((~held).sum()), N_HELD_OUT, replace=False)]
    return adata, held, np.sort(train)


def _held_out_fit(screen: str, steps_factor: float = 1.0, encoder: str = "counts"):
    """``(adata, held, model, train)``: :func:`_held_out_cells` and ``fit``'s defaults (but ``encoder``) on all but
    the held-out cells (fit seed 0)."""
    import torch

    import pyro_svae
    from pyro_svae.datasets import grid_screens
    from pyro_svae.train import auto_max_epochs, split_cells

    torch.set_num_threads(1)
    spec = grid_screens("all")[screen]
    adata, held, train = _held_out_cells(screen)
    n_train = len(split_cells(int((~held).sum()), 0.1, np.random.default_rng(0))[0])  # less fit's validation cells
    epochs = "auto" if steps_factor == 1 else int(round(steps_factor * auto_max_epochs(n_train, 256)))
    model = pyro_svae.fit(adata[~held].copy(), n_latent=spec["n_latent"], max_epochs=epochs,
                          control="control" if spec["n_control"] else None, seed=0, progress=False, encoder=encoder)
    return adata, held, model, train


def evidence_row(screen: str, steps_factor: float = 1.0) -> dict:
    from pyro_svae import metrics
    from pyro_svae.datasets import grid_screens
    from pyro_svae.datasets.grid import part_of
    from pyro_svae.datasets.oracle import true_posterior

    spec = grid_screens("all")[screen]
    start = time.perf_counter()
    adata, held, model, train = _held_out_fit(screen, steps_factor)
    row = {"screen": screen, "part": part_of(screen), "n_latent": spec["n_latent"], "cells": int(held.sum())}
    for prefix, cells in (("", adata[held].copy()), ("train_", adata[train].copy())):
        truth = true_posterior(cells, n_samples=1024, library="observed")
        cells.obs["cell"] = cells.obs_names  # one group per cell: the IWELBO of each
        fit = {n: model.marginal_log_likelihood(cells, n_samples=n, by="cell", seed=0).reindex(cells.obs_names).to_numpy()
               for n in (100, 1000)}
        difference = truth.log_evidence - fit[1000]
        row.update({f"{prefix}truth_evidence": float(truth.log_evidence.mean()), f"{prefix}fit_iwelbo": float(fit[1000].mean()),
                    f"{prefix}fit_iwelbo_gain": float((fit[1000] - fit[100]).mean()),  # from 100 to 1,000 samples
                    f"{prefix}difference": float(difference.mean()),
                    f"{prefix}difference_se": float(difference.std(ddof=1) / np.sqrt(len(difference)))})
        if not prefix:
            z = cells.obsm["z_true"]
            row.update({"truth_mcc": metrics.mcc(truth.mean, z), "fit_mcc": metrics.mcc(model.get_latent(cells), z),
                        "truth_median_ess": float(np.median(truth.ess))})
    return {**row, "steps_factor": steps_factor, "epochs": len(model.history), "seconds": time.perf_counter() - start}


def fit_best_elbo(model, cells, steps: int = 1000, n_eval: int = 50) -> np.ndarray:
    """The fit's ELBO per cell with each cell's own mean-field ``q(z)`` in place of the encoder's: Adam (learning
    rate 0.01) on its mean and log scale from the encoder's, one draw of ``z`` and of the global sites a step,
    scored as the mean of ``n_eval`` draws. Against :func:`pyro_svae.datasets.true_elbo` (the same per-cell family
    under the true model), a comparison of the two models by the objective without the encoder's amortisation gap."""
    import torch

    from pyro_svae.guide import encode
    from pyro_svae.objective import cell_elbo
    from pyro_svae.posterior import expected_shifts
    from pyro_svae.runtime import DataOnDevice

    screen = model._read(cells)
    batch = DataOnDevice(screen, model.device).minibatch(np.arange(screen.n_cells))
    nets, encoder = model.components.nets, model.components.nets.encoder
    with model.scope():
        with torch.no_grad():
            q = encode(nets, batch, expected_shifts(model.components, model.device))
        loc, log_scale = q.mean.clone().requires_grad_(True), q.variance.sqrt().log().clone().requires_grad_(True)

        class PerCell(torch.nn.Module):  # the encoder's place: every cell's own parameters
            conjugate = full_covariance = False  # a free mean-field q per cell, whatever the encoder's family

            def forward(self, counts, batch_codes, prior_loc=None):
                return loc, log_scale.exp()

        nets.encoder = PerCell()
        try:
            optimizer = torch.optim.Adam([loc, log_scale], lr=0.01)
            for _ in range(steps):
                optimizer.zero_grad()
                (-cell_elbo(model.components, batch).sum()).backward()
                optimizer.step()
            with torch.no_grad():
                return np.mean([cell_elbo(model.components, batch).numpy() for _ in range(n_eval)], axis=0)
        finally:
            nets.encoder = encoder


def gap_row(screen: str, encoder: str = "counts") -> dict:
    """The ELBO against the log evidence, of the truth and of the fit (``fit(encoder=encoder)``), on the
    ``--evidence`` fit's training cells."""
    from pyro_svae.datasets.grid import part_of
    from pyro_svae.datasets.oracle import true_elbo, true_posterior

    start = time.perf_counter()
    adata, _, model, train = _held_out_fit(screen, encoder=encoder)
    cells = adata[train].copy()
    cells.obs["cell"] = cells.obs_names  # one group per cell
    per_cell = {
        "truth_evidence": true_posterior(cells, n_samples=1024, library="observed").log_evidence,
        "truth_elbo": true_elbo(cells, n_draws=8),
        "fit_iwelbo": model.marginal_log_likelihood(cells, n_samples=1000, by="cell", seed=0)[cells.obs_names].to_numpy(),
        # the ELBO of one draw of z per cell, averaged over 10 draws (and 10 draws of the global sites)
        "fit_elbo": np.mean([model.elbo(cells, by="cell", seed=s)[cells.obs_names].to_numpy() for s in range(10)], 0),
        "fit_best_elbo": fit_best_elbo(model, cells),
    }
    se = {f"{name}_se": float(difference.std(ddof=1) / np.sqrt(len(train))) for name, difference in (
        ("elbo_difference", per_cell["truth_elbo"] - per_cell["fit_elbo"]),
        ("best_elbo_difference", per_cell["truth_elbo"] - per_cell["fit_best_elbo"]))}
    return {"screen": screen, "part": part_of(screen), "cells": len(train), "encoder": encoder,
            **{name: float(values.mean()) for name, values in per_cell.items()}, **se,
            "seconds": time.perf_counter() - start}


def gap_full_row(screen: str) -> dict:
    """The truth's ELBO with each cell's best full-covariance Gaussian, on the ``--gap`` cells (no fit)."""
    import torch

    from pyro_svae.datasets.oracle import true_elbo

    torch.set_num_threads(1)
    start = time.perf_counter()
    adata, _, train = _held_out_cells(screen)
    values = true_elbo(adata[train].copy(), n_draws=8, covariance="full")
    return {"screen": screen, "truth_elbo_full": float(values.mean()), "seconds": time.perf_counter() - start}


def gap_table(rows: pd.DataFrame, full: pd.DataFrame = None) -> pd.DataFrame:
    """Per screen (training cells): truth and fit, log evidence (the fit's IWELBO) and ELBO (the fit's with its
    encoder and with each cell's own ``q``: ``fit_best_elbo``), the differences truth - fit, the mean-field gap
    of each (log evidence - per-cell ELBO), the fit's amortisation gap (per-cell ELBO - encoder's ELBO) and, with
    ``full`` (:func:`gap_full_row` rows), the truth's gap with a full-covariance ``q``."""
    rows = rows.set_index("screen")
    out = rows[["part", "truth_evidence", "fit_iwelbo", "truth_elbo", "fit_elbo", "fit_best_elbo"]].copy()
    out["evidence_difference"] = out["truth_evidence"] - out["fit_iwelbo"]
    out["elbo_difference"] = out["truth_elbo"] - out["fit_elbo"]
    out["best_elbo_difference"] = out["truth_elbo"] - out["fit_best_elbo"]
    out["best_elbo_difference_se"] = rows["best_elbo_difference_se"]
    out["truth_gap"] = out["truth_evidence"] - out["truth_elbo"]
    out["fit_gap"] = out["fit_iwelbo"] - out["fit_best_elbo"]
    out["amortisation_gap"] = out["fit_best_elbo"] - out["fit_elbo"]
    if full is not None and len(full):  # the truth with a full-covariance q (--gap-full)
        out["truth_gap_full"] = out["truth_evidence"] - full.set_index("screen")["truth_elbo_full"]
    return out.sort_values("evidence_difference")


def _gap_lines(gap: pd.DataFrame) -> list:
    if gap is None or not len(gap):
        return []
    margin = 2 * gap["best_elbo_difference_se"]
    truth, fit = gap[gap["best_elbo_difference"] > margin], gap[gap["best_elbo_difference"] < -margin]
    return ["", "## Does the ELBO prefer the truth? (`--gap`)", "",
            f"- screens whose training cells the truth's ELBO scores higher than the fit's, each with every cell's own "
            f"mean-field q (difference > 2 SE): {len(truth)} of {len(gap)} ({', '.join(truth.index) or 'none'}); "
            f"the fit's higher: {len(fit)} ({', '.join(fit.index) or 'none'}); within 2 SE: {len(gap) - len(truth) - len(fit)}",
            f"- the mean-field gap (log evidence - ELBO) per cell: truth {gap['truth_gap'].min():.2f} to "
            f"{gap['truth_gap'].max():.2f} nats, fit {gap['fit_gap'].min():.2f} to {gap['fit_gap'].max():.2f}; the fit's "
            f"encoder is {gap['amortisation_gap'].min():.2f} to {gap['amortisation_gap'].max():.2f} below its per-cell optimum",
            *([] if "truth_gap_full" not in gap else [
                f"- the truth's gap with a full-covariance q (`--gap-full`): {gap['truth_gap_full'].min():.2f} to "
                f"{gap['truth_gap_full'].max():.2f} nats"]),
            "", markdown(gap)]


def _encoder_gap_lines(gap: pd.DataFrame, others: dict) -> list:
    """Per other encoder (``--gap --encoder``): its fit's ELBO per cell with the encoder and with each cell's own
    mean-field q, the amortisation gap and the log evidence, beside the default encoder's on the same screens."""
    lines = []
    for encoder, table in others.items():
        rows = []
        for screen, row in table.iterrows():
            base = gap.loc[screen] if gap is not None and screen in gap.index else None
            pair = lambda name: f"{row[name]:.2f}" if base is None else f"{base[name]:.2f} / {row[name]:.2f}"
            rows.append({"screen": screen, "fit ELBO, encoder": pair("fit_elbo"), "fit ELBO, each cell's q": pair("fit_best_elbo"),
                         "amortisation gap": pair("amortisation_gap"), "fit log evidence": pair("fit_iwelbo"),
                         "truth - fit, each cell's q": pair("best_elbo_difference")})
        lines += ["", f"### `fit(encoder=\"{encoder}\")` (`--gap --encoder {encoder}`)", "",
                  "Nats per cell on the same training cells, the default encoder / this one:", "",
                  markdown(pd.DataFrame(rows).set_index("screen"))]
    return lines


def evidence_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per screen: the log evidence per cell of the truth and of the fit on held-out cells, their
    difference with its standard error over cells, the same on training cells (``train_``), what
    the fit's IWELBO gained from 100 to 1,000 samples, and the MCC of each on the held-out cells."""
    factor = rows["steps_factor"].fillna(1.0) if "steps_factor" in rows else pd.Series(1.0, index=rows.index)
    longer, rows = rows[factor != 1].set_index("screen"), rows[factor == 1]
    out = rows.set_index("screen")[["part", "n_latent", "truth_evidence", "fit_iwelbo", "difference",
                                    "difference_se", "train_difference", "train_difference_se", "fit_iwelbo_gain",
                                    "truth_mcc", "fit_mcc", "truth_median_ess"]].sort_values("fit_mcc")
    out.attrs["longer"] = longer.loc[longer.index.isin(out.index)]  # runs with --steps-factor, beside these
    return out


def table(oracle: pd.DataFrame, fits: pd.DataFrame, results: Path) -> pd.DataFrame:
    grid = read_runs(results / "recovery_grid_runs.jsonl")
    defaults = grid[(grid["method"] == "spike_and_slab") & (grid["screen_seed"] == 0)].groupby("screen")["mcc"].mean()
    ceiling = read_runs(results / "ceiling_runs.jsonl")
    supervised = (ceiling[(ceiling["method"] == "supervised") & (ceiling["screen_seed"] == 0)].groupby("screen")["mcc"].mean()
                  if len(ceiling) else pd.Series(dtype=float))
    out = oracle.set_index("screen")[["part", "n_latent", "label_only", "oracle_map", "oracle", "median_ess"]]
    out = out.assign(supervised=supervised, fit=defaults)
    out = out.assign(fit_over_oracle=out["fit"] / out["oracle"])
    if len(fits):
        out = out.join(fits.set_index("screen")[["encoder", "fitted_posterior"]])
    return out.sort_values("fit")


def _plot(screens: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.2, 5.4))
    for part, marker in (("dev", "o"), ("held_out", "s"), ("fresh", "^")):
        rows = screens[screens["part"] == part]
        ax.scatter(rows["oracle"], rows["fit"], marker=marker, label=f"{part} ({len(rows)})", alpha=0.8)
    for name, row in screens[screens["fit"] < 0.9].iterrows():
        ax.annotate(name, (row["oracle"], row["fit"]), fontsize=7, xytext=(3, -9), textcoords="offset points")
    low = min(screens["fit"].min(), screens["oracle"].min()) - 0.02
    ax.plot([low, 1], [low, 1], color="grey", lw=0.8, label="fit = bound")
    ax.axhline(0.9, color="red", lw=0.8, ls="--", label="MCC bar 0.9")
    ax.axvline(0.9, color="red", lw=0.8, ls=":")
    ax.set_xlim(low, 1.0)
    ax.set_ylim(low, 1.0)
    ax.set_xlabel("bound: MCC of the posterior mean under the true model")
    ax.set_ylabel("defaults' latent MCC (committed grid fits, screen seed 0)")
    ax.set_title("Latent MCC against what the counts allow, per grid screen")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_evidence(evidence: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = evidence.sort_values("fit_mcc")
    fig, ax = plt.subplots(figsize=(7.2, 4.2))
    x = np.arange(len(rows))
    for shift, prefix, label in ((-0.2, "train_", "training cells"), (0.2, "", "held-out cells")):
        ax.bar(x + shift, rows[f"{prefix}difference"], 0.4, yerr=2 * rows[f"{prefix}difference_se"], label=label)
    ax.bar(x - 0.2, rows["fit_iwelbo_gain"], 0.4, fill=False, hatch="//", edgecolor="grey",
           label="IWELBO gain, 100 -> 1,000 samples")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, [f"{name}\nMCC {mcc:.2f}" for name, mcc in rows["fit_mcc"].items()], fontsize=7, rotation=45,
                  ha="right")
    ax.set_ylabel("log p(x | a): truth - fit (nats per cell)")
    ax.set_title("Does the likelihood prefer the truth? (> 0: yes)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _evidence_lines(evidence: pd.DataFrame) -> list:
    if evidence is None or not len(evidence):
        return []
    lines = ["", "## Does the likelihood prefer the truth? (`--evidence`)", ""]
    for prefix, cells in (("", "held-out"), ("train_", "training")):
        ahead = evidence[evidence[f"{prefix}difference"] > 2 * evidence[f"{prefix}difference_se"]]
        lines.append(f"- screens where the truth explains the {cells} cells better than the fit (difference > 2 SE): "
                     f"{len(ahead)} of {len(evidence)}; difference per cell {evidence[f'{prefix}difference'].min():+.3f} "
                     f"to {evidence[f'{prefix}difference'].max():+.3f} nats (median {evidence[f'{prefix}difference'].median():+.3f})")
    longer = evidence.attrs.get("longer")
    if longer is not None and len(longer):
        lines += ["- with more steps (`--steps-factor`): " + ", ".join(
            f"{name} x{row['steps_factor']:g}: MCC {evidence.loc[name, 'fit_mcc']:.3f} -> {row['fit_mcc']:.3f}, training-cell "
            f"difference {evidence.loc[name, 'train_difference']:+.3f} -> {row['train_difference']:+.3f}, held-out "
            f"{evidence.loc[name, 'difference']:+.3f} -> {row['difference']:+.3f}" for name, row in longer.iterrows())]
    return lines + [
            f"- the fit's IWELBO from 100 to 1,000 samples gains {evidence['fit_iwelbo_gain'].min():.3f} to "
            f"{evidence['fit_iwelbo_gain'].max():.3f} nats per cell (held-out cells): how far from converged the bound is",
            f"- Spearman across these screens of the difference with the fit's MCC: "
            f"{evidence['difference'].corr(evidence['fit_mcc'], method='spearman'):+.2f}", "",
            "", "![truth against fit](oracle_ceiling_evidence.png)", "", markdown(evidence)]


def report(screens: pd.DataFrame, command: str, path: Path, evidence: pd.DataFrame = None,
           gap: pd.DataFrame = None, encoder_gaps: dict = None) -> str:
    below = screens[screens["fit"] < 0.9]
    lines = [
        "# What the counts allow: the latent MCC of the posterior under the true model (oracle_ceiling)", "",
        f"`{command}`", "", (__doc__ or "").split("\n\n", 2)[2].split("\n\nWrites")[0], "",
        f"- screens whose bound is below 0.9: {int((screens['oracle'] < 0.9).sum())} of {len(screens)} "
        f"(lowest {screens['oracle'].min():.3f}, {screens['oracle'].idxmin()})",
        f"- screens whose fit is below 0.9: {len(below)}; their bounds {below['oracle'].min():.3f}-{below['oracle'].max():.3f}, "
        f"their fits {below['fit_over_oracle'].min():.3f}-{below['fit_over_oracle'].max():.3f} of the bound",
        f"- median share of the bound the fits reach: {screens['fit_over_oracle'].median():.3f} "
        f"(below the bar {below['fit_over_oracle'].median():.3f}, at or above it "
        f"{screens.loc[screens['fit'] >= 0.9, 'fit_over_oracle'].median():.3f})",
        f"- screens where the supervised encoder, the earlier 'ceiling', is below the fit: "
        f"{int((screens['supervised'] < screens['fit']).sum())} of {int(screens['supervised'].notna().sum())}",
        f"- Spearman across screens of the fit's MCC with the bound: "
        f"{screens['fit'].corr(screens['oracle'], method='spearman'):+.2f}",
        *([] if "encoder" not in screens else [
            f"- fits of the defaults (`--fit`, {int(screens['encoder'].notna().sum())} screens): the posterior under the "
            f"fitted model given counts and label gains "
            + ", ".join(f"{name} {row['fitted_posterior'] - row['encoder']:+.3f} (of {row['oracle'] - row['encoder']:.3f} to the bound)"
                        for name, row in screens[screens["encoder"].notna()].iterrows())]),
        "", "![fit against the bound](oracle_ceiling.png)", "", markdown(screens), *_evidence_lines(evidence), *_gap_lines(gap),
        *_encoder_gap_lines(gap, encoder_gaps or {}), ""]
    text = "\n".join(lines)
    path.write_text(text)
    return text


def main(argv=None) -> None:
    from pyro_svae.datasets import grid_screens

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--screens", nargs="*", default=None, help="grid screens (default: all)")
    parser.add_argument("--fit", nargs="*", default=[], metavar="SCREEN", help="grid screens to fit (seed 0)")
    parser.add_argument("--evidence", nargs="*", default=[], metavar="SCREEN",
                        help="grid screens to fit without 1,000 cells and score on them against the truth (seed 0)")
    parser.add_argument("--steps-factor", type=float, default=1.0,
                        help="--evidence fits with this many times max_epochs='auto' (rows kept apart, _xF_runs.jsonl)")
    parser.add_argument("--gap", nargs="*", default=[], metavar="SCREEN",
                        help="the --evidence fit's training cells: ELBO and log evidence of truth and fit")
    parser.add_argument("--gap-full", nargs="*", default=[], metavar="SCREEN",
                        help="the truth's ELBO with a full-covariance q on the --gap cells (no fit)")
    parser.add_argument("--encoder", default="counts", help="--gap fits with fit(encoder=...) (rows kept apart, "
                        "oracle_ceiling_gap_encoder_ENCODER_runs.jsonl)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args(argv)
    results = Path(args.results)
    runs_path = results / "oracle_ceiling_runs.jsonl"
    run_screens(oracle_row, args.screens or list(grid_screens("all")), runs_path, args.jobs,
                   lambda row: f"{row['screen']:>18}: oracle {row['oracle']:.3f} map {row['oracle_map']:.3f} "
                               f"label {row['label_only']:.3f} ess {row['median_ess']:.0f} {row['seconds']:.0f}s")
    fits_path = results / "oracle_ceiling_fits_runs.jsonl"
    run_screens(fit_row, args.fit, fits_path, args.jobs,
                   lambda row: f"{row['screen']:>18}: encoder {row['encoder']:.3f} "
                               f"fitted posterior {row['fitted_posterior']:.3f}")
    factor = "" if args.steps_factor == 1 else f"_x{args.steps_factor:g}"
    evidence_path = results / f"oracle_ceiling_evidence{factor}_runs.jsonl"
    run_screens(functools.partial(evidence_row, steps_factor=args.steps_factor), args.evidence, evidence_path, args.jobs,
                lambda row: f"{row['screen']:>18}: truth {row['truth_evidence']:.3f} fit {row['fit_iwelbo']:.3f} "
                            f"({row['difference']:+.3f} +- {row['difference_se']:.3f}; training cells "
                            f"{row['train_difference']:+.3f}) MCC {row['truth_mcc']:.3f} / "
                            f"{row['fit_mcc']:.3f} {row['seconds']:.0f}s")
    gap_path = results / "oracle_ceiling_gap_runs.jsonl"
    run_screens(functools.partial(gap_row, encoder=args.encoder), args.gap,
                gap_path if args.encoder == "counts" else results / f"oracle_ceiling_gap_encoder_{args.encoder}_runs.jsonl", args.jobs,
                lambda row: f"{row['screen']:>18}: evidence truth {row['truth_evidence']:.2f} fit {row['fit_iwelbo']:.2f}; "
                            f"ELBO truth {row['truth_elbo']:.2f} fit {row['fit_elbo']:.2f} {row['seconds']:.0f}s")
    evidence_runs = [read_runs(path) for path in sorted(results.glob("oracle_ceiling_evidence*_runs.jsonl"))]
    evidence = pd.concat(evidence_runs) if evidence_runs else pd.DataFrame()
    screens_table = table(read_runs(runs_path), read_runs(fits_path), results)
    command = "python benchmarks/oracle_ceiling.py " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    _plot(screens_table, results / "oracle_ceiling.png")
    evidence = evidence_table(evidence) if len(evidence) else None
    if evidence is not None:
        _plot_evidence(evidence, results / "oracle_ceiling_evidence.png")
    full_path = results / "oracle_ceiling_gap_full_runs.jsonl"
    run_screens(gap_full_row, args.gap_full, full_path, args.jobs,
                lambda row: f"{row['screen']:>18}: truth ELBO, full covariance {row['truth_elbo_full']:.2f} {row['seconds']:.0f}s")
    gap = gap_table(read_runs(gap_path), read_runs(full_path)) if gap_path.exists() else None
    encoder_gaps = {path.name[len("oracle_ceiling_gap_encoder_"):-len("_runs.jsonl")]: gap_table(read_runs(path))
                    for path in sorted(results.glob("oracle_ceiling_gap_encoder_*_runs.jsonl"))}
    print(report(screens_table, command.strip(), results / "oracle_ceiling.md", evidence, gap, encoder_gaps))


if __name__ == "__main__":
    main()
