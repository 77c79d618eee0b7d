"""Few-shot transfer on grid screens: targets of unseen perturbations from 5, 10, 20 and 100 cells.

    python benchmarks/transfer_grid.py [--screens base shift2 ...] [--methods spike_and_slab gaussian] [--jobs 2]

For each screen (``pyro_svae.datasets.grid``, seed 0), a fifth of the perturbations is held out of
training. Each method is fitted on the rest (``fit`` defaults, ``n_latent`` the true number), then
transferred (``SVAE.transfer``) to the held-out perturbations on ``k`` of their cells, for every
``k`` (where a perturbation has ``k`` + 40 cells), and scored on 40 others: the transferred targets' precision / recall / F1 against
the truth (latents matched on the training cells; targets at PIP > 0.5) and the held-out IWELBO
per cell. Writes ``benchmarks/results/transfer_grid.md`` and ``.png``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from recovery_grid import markdown, read_runs, run_and_record

RESULTS = Path(__file__).resolve().parent / "results"
SCREENS = ["base", "shift2", "latents12", "targets3", "nb3", "no_controls", "cells300", "perturbations20", "mixed_easy"]
TEST_CELLS = 40
CELLS = [5, 10, 20, 100]
METHODS = {"spike_and_slab": {}, "gaussian": {"prior": "gaussian"}}


def _split(adata, held_out, seed: int, test_cells: int = TEST_CELLS):
    rng = np.random.default_rng(seed)
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    train = ~np.isin(labels, held_out)
    pools = {p: rng.permutation(np.flatnonzero(labels == p)) for p in held_out}
    test = np.concatenate([cells[-test_cells:] for cells in pools.values()])
    return adata[train].copy(), pools, adata[np.sort(test)].copy()


def run(screen: str, method: str, seed: int = 0) -> list:
    import torch

    torch.set_num_threads(1)
    import pyro_svae
    from pyro_svae import metrics
    from pyro_svae.datasets import grid_screens, simulate_grid_screen

    spec = grid_screens("all")[screen]
    adata = simulate_grid_screen(screen, seed=seed)
    names = list(adata.uns["perturbation_names"])
    rng = np.random.default_rng(seed)
    held_out = sorted(rng.choice(names, size=max(2, len(names) // 5), replace=False))
    train, pools, test = _split(adata, held_out, seed)
    control = "control" if spec["n_control"] else None
    start = time.perf_counter()
    model = pyro_svae.fit(train, n_latent=spec["n_latent"], control=control, seed=seed, progress=False,
                          **METHODS[method])
    fit_seconds = time.perf_counter() - start
    matching = metrics.match_latents(model.get_latent(train), train.obsm["z_true"])
    truth = adata.uns["true_targets"][[names.index(p) for p in held_out]]
    rows = []
    for k in CELLS:
        if min(len(pool) for pool in pools.values()) < k + TEST_CELLS:  # too few cells: no k-shot here
            continue
        cells = np.sort(np.concatenate([pool[:k] for pool in pools.values()]))
        few = adata[cells].copy()
        start = time.perf_counter()
        transferred = model.transfer(few, seed=seed)
        pips = transferred.intervention_targets().loc[held_out].to_numpy()
        scores = metrics.target_scores(pips, truth, matching)
        rows.append({"screen": screen, "method": method, "cells": k, **{f"target_{n}": v for n, v in scores.items()},
                     "heldout_iwelbo": transferred.marginal_log_likelihood(test, n_samples=50, seed=0),
                     "fit_seconds": fit_seconds, "transfer_seconds": time.perf_counter() - start})
    return rows


def report(table: pd.DataFrame, results: Path, name: str, command: str) -> pd.DataFrame:
    """Write ``<name>.md`` and ``.png`` from the runs; returns the median table."""
    methods = sorted(table["method"].unique())
    summary = table.groupby(["method", "cells"])[["target_precision", "target_recall", "target_f1",
                                                  "heldout_iwelbo"]].median()
    wide = table.pivot_table(index=["screen", "cells"], columns="method", values=["target_f1", "heldout_iwelbo"])
    both = {"spike_and_slab", "gaussian"} <= set(methods)
    difference = (wide[("heldout_iwelbo", "spike_and_slab")] - wide[("heldout_iwelbo", "gaussian")]).dropna() if both else None
    pd.set_option("display.width", 200)
    print(summary.round(3).to_string())
    lines = ["# Few-shot transfer on grid screens", "", f"`{command}`", "",
             "A fifth of each screen's perturbations held out of training, then transferred on k of their cells and",
             "scored on 40 others (k = 100 only on screens with 140 cells per perturbation or more): transferred targets "
             "against the truth (PIP > 0.5, latents matched on the training",
             "cells) and held-out IWELBO per cell (50 importance samples).", "",
             f"## Median over screens ({table['screen'].nunique()} screens)", "", markdown(summary), ""]
    if difference is not None:
        by_cells = difference.groupby(level="cells")
        lines += ["## Held-out IWELBO, sparse minus dense (nats per cell)", "",
                  markdown(pd.DataFrame({"median": by_cells.median(), "screens": by_cells.size(),
                                         "share where sparse >= dense": by_cells.apply(lambda d: float((d >= 0).mean()))})),
                  ""]
    lines += ["## Every screen", "", markdown(wide), ""]
    (results / f"{name}.md").write_text("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.8))
    for method in methods:
        part = summary.loc[method]
        axes[0].plot(part.index, part["target_f1"], "o-", label=method)
    axes[0].set_ylabel("median target F1, transferred perturbations")
    axes[0].set_ylim(0, 1.02)
    axes[0].legend(fontsize=8)
    if difference is not None:
        frame = difference.rename("difference").reset_index()
        axes[1].scatter(frame["cells"] * np.exp(np.random.default_rng(0).uniform(-0.08, 0.08, len(frame))),
                        frame["difference"], s=14, alpha=0.6, label="one screen")
        median = difference.groupby(level="cells").median()
        axes[1].plot(median.index, median.to_numpy(), "k-o", label="median")
        axes[1].axhline(0, color="grey", lw=0.8)
        axes[1].set_ylabel("held-out IWELBO per cell,\nsparse minus dense (nats)")
        axes[1].legend(fontsize=8)
    for ax in axes:
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(CELLS, [str(k) for k in CELLS])
        ax.set_xlabel("cells seen per new perturbation")
    fig.tight_layout()
    fig.savefig(results / f"{name}.png", dpi=120)
    print(f"Wrote {results / name}.md and .png")
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--screens", nargs="+", default=SCREENS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--name", default="transfer_grid")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"{args.name}_runs.jsonl"
    rows = read_runs(path).to_dict("records")
    done = {(r["screen"], r["method"]) for r in rows}
    jobs = [] if args.report_only else [(s, m) for s in args.screens for m in args.methods if (s, m) not in done]
    print(f"{len(jobs)} fits to run, {len(done)} already in {path}")
    rows += run_and_record(run, jobs, path, args.jobs, lambda r: (
        f"{r['screen']} {r['method']} k={r['cells']}: F1 {r['target_f1']:.2f}, IWELBO {r['heldout_iwelbo']:.2f}"))
    if not rows:
        raise SystemExit(f"No runs in {path}: run without --report-only first.")
    table = pd.DataFrame(rows)
    table = table[table["screen"].isin(args.screens) & table["method"].isin(args.methods)]
    command = "python benchmarks/transfer_grid.py" + "".join(f" {a}" for a in (argv or []))
    return report(table, results, args.name, command)


if __name__ == "__main__":
    main(sys.argv[1:])
