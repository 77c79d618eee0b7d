"""How much the counts say about the latents, per grid screen: the posterior under the true model.

    python benchmarks/oracle_ceiling.py                       # every grid screen, seed 0 (~15 min on 2 cores)
    python benchmarks/oracle_ceiling.py --fit latents20 ...   # and fits of the defaults (~3 min each)

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

Writes ``benchmarks/results/oracle_ceiling.md`` and ``.png``; rows are kept in
``oracle_ceiling_runs.jsonl`` (a re-run skips the screens already there).
"""

from __future__ import annotations

import argparse
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
    import pyro.distributions as dist
    import torch

    from pyro_svae.heldout import log_prior_z
    from pyro_svae.likelihoods import count_distribution, dispersion_param
    from pyro_svae.posterior import draw_globals
    from pyro_svae.runtime import per_cell

    screen, components = model._read(adata), model.components
    nets = components.nets
    with model._seeded(seed):
        draws = draw_globals(components, n_samples, model.device)

        def mean(batch):
            loc, scale = nets.encoder(batch["counts"], batch["batch"])
            q = dist.Normal(loc, scale)
            z = q.sample((n_samples,))  # [S, B, K]
            counts = count_distribution(nets.decoder, components.likelihood, z, batch["batch"], batch["library"],
                                        dispersion_param(components.likelihood, nets.n_genes))
            log_w = (counts.log_prob(batch["counts"]).sum(-1) + log_prior_z(z, draws, batch["perturbations"])
                     - q.log_prob(z).sum(-1))
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


def report(screens: pd.DataFrame, command: str, path: Path) -> str:
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
        "", "![fit against the bound](oracle_ceiling.png)", "", markdown(screens), ""]
    text = "\n".join(lines)
    path.write_text(text)
    return text


def main(argv=None) -> None:
    from pyro_svae.datasets import grid_screens

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--screens", nargs="*", default=None, help="grid screens (default: all)")
    parser.add_argument("--fit", nargs="*", default=[], metavar="SCREEN", help="grid screens to fit (seed 0)")
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
    screens_table = table(read_runs(runs_path), read_runs(fits_path), results)
    command = "python benchmarks/oracle_ceiling.py " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    _plot(screens_table, results / "oracle_ceiling.png")
    print(report(screens_table, command.strip(), results / "oracle_ceiling.md"))


if __name__ == "__main__":
    main()
