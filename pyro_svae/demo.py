"""``python -m pyro_svae.demo``: fit on a simulated screen, print recovery metrics, write plots.

Compares the sparse prior (``fit``'s defaults) with the plain VAE (``none``) and dense shifts
(``gaussian``), both as they are, from a random start (no warm start), on the package's simulator,
as ``make demo`` does; the same comparison over a grid of screens is
``benchmarks/results/recovery_grid.md``.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from . import datasets, fit, metrics, pl

__all__ = ["recovery", "posterior_predictive_check", "main"]

#: The simulated screen of the demo and of the recovery test.
DEMO_SCREEN = dict(n_perturbations=30, n_latent=6, n_genes=100, n_cells_per_perturbation=150, n_control=300,
                   max_targets=2, seed=0)


#: Recovery metrics against the simulated truth (:func:`pyro_svae.metrics.recovery`).
recovery = metrics.recovery


def posterior_predictive_check(model, num_samples: int = 50):
    """The model's :meth:`~pyro_svae.SVAE.ppc_summary`, with the calibration figures printed."""
    summary = model.ppc_summary(num_samples=num_samples)
    zeros = summary[summary["statistic"] == "gene_zero_fraction"]
    library = summary[summary["statistic"] == "cell_library_size"]
    coverage = summary.groupby("statistic", sort=False)["inside"].mean()
    print("Posterior predictive check (spike_and_slab, 90% intervals): "
          f"zero fraction per gene off by {(zeros['observed'] - zeros['predicted']).abs().mean():.4f} on average, "
          f"mean library size off by {library['predicted'].mean() / library['observed'].mean() - 1:+.2%}; coverage "
          + ", ".join(f"{name} {value:.0%}" for name, value in coverage.items()))
    return summary


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="demo_output", help="folder for the PNG files")
    parser.add_argument("--priors", default="spike_and_slab,gaussian,none")
    parser.add_argument("--max-epochs", default="auto")
    parser.add_argument("--seed", type=int, default=0, help="the fits' seed (the screen stays the same)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the same numbers on any machine "
                        "with the same torch build)")
    args = parser.parse_args(argv)
    import torch

    # floating-point summation order depends on the thread count: pinning it pins the figures
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    adata = datasets.simulate(**DEMO_SCREEN)
    print(f"Simulated screen: {adata.n_obs} cells x {adata.n_vars} genes, {DEMO_SCREEN['n_perturbations']} perturbations, "
          f"{DEMO_SCREEN['n_latent']} latents")
    max_epochs = args.max_epochs if args.max_epochs == "auto" else int(args.max_epochs)
    results = {}
    for prior in args.priors.split(","):
        start = time.perf_counter()
        baseline = {} if prior == "spike_and_slab" else {"warm_start": None}  # the baselines as they are
        model = fit(adata, n_latent=DEMO_SCREEN["n_latent"], prior=prior, max_epochs=max_epochs, progress=False,
                    seed=args.seed, **baseline)
        results[prior] = {**recovery(model, adata), "epochs": len(model.history), "seconds": time.perf_counter() - start}
        if prior == "spike_and_slab":
            fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), gridspec_kw={"width_ratios": [1.2, 1]})
            pl.training(model, ax=axes[0])
            matching = metrics.match_latents(model.get_latent(adata), adata.obsm["z_true"])
            pl.targets(model, ax=axes[1], truth=metrics.true_targets_of(model, adata, matching))
            axes[0].set_title("training")
            axes[1].set_title("posterior inclusion probabilities")
            fig.tight_layout()
            fig.savefig(out / "spike_and_slab.png", dpi=120)
            plt.close(fig)
            ppc = posterior_predictive_check(model)
            axes = pl.ppc(ppc)
            axes[0].figure.tight_layout()
            axes[0].figure.savefig(out / "posterior_predictive.png", dpi=120)
            plt.close(axes[0].figure)
    header = f"{'prior':<16}{'MCC':>7}{'MCC(s)':>8}{'R2':>7}{'prec':>7}{'recall':>8}{'F1':>7}{'epochs':>8}{'sec':>7}"
    print(header)
    for prior, r in results.items():
        print(f"{prior:<16}{r['mcc']:7.3f}{r['mcc_spearman']:8.3f}{r['r2']:7.3f}{r['target_precision']:7.3f}"
              f"{r['target_recall']:8.3f}{r['target_f1']:7.3f}{r['epochs']:8d}{r['seconds']:7.1f}")
    print(f"Wrote {out / 'spike_and_slab.png'} and {out / 'posterior_predictive.png'}. "
          "Over a grid of simulated screens: benchmarks/results/recovery_grid.md")
    return results


if __name__ == "__main__":
    main()
