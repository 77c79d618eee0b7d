"""Unseen combinations on simulated screens: the model's prediction of held-out pairs against the
additive baseline, with additive (interaction 0) and non-additive (interaction > 0) pairs.

    python benchmarks/combinations.py [--interactions 0 0.5 1] [--priors spike_and_slab gaussian] [--seeds 0 1 2]
                                      [--jobs 2]

Each screen is ``pyro_svae.datasets.simulate(n_perturbations, n_latent, n_genes, n_cells_per_perturbation,
n_control, n_combinations=..., interaction=..., seed=...)``: every single perturbation and
``--n-combinations`` random pairs ``"pA+pB"``, whose latent shift is the sum of the members' plus,
with ``interaction > 0``, a non-additive shift of ``interaction * shift_size`` on one latent. A
share ``--held-out`` of the pairs is held out of training (their members stay in); the model
(``fit(n_latent=...)`` per prior) predicts them from its members' shifts (``SVAE.predict``, the
shifts add up in latent space), and ``pyro_svae.evaluation.evaluate`` scores the prediction
against the baselines ``control``, ``training_mean``, ``additive`` (the sum of the members'
observed changes in gene space) and ``split_half``. With interaction 0 the model's assumption
holds exactly (the decoder is non-linear, so the gene-space sum does not); with interaction > 0
it does not, and neither does the additive baseline's. Writes ``<out>/<name>.md``, ``.csv`` and
``.png`` (default ``benchmarks/results/combinations``).

Tiny settings for a smoke run (well under a minute):
``--interactions 0 1 --priors gaussian --seeds 0 --n-perturbations 6 --n-combinations 6 --n-genes 30
--n-cells 40 --n-control 80 --max-epochs 2 --n-predicted 50 --iw-samples 5``
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
METRICS = ["pearson_delta", "pearson_delta_de", "mae", "discrimination_score", "overlap_at_N", "iwelbo"]


def screen(interaction: float, seed: int, args):
    """The simulated screen, and the pairs held out of training."""
    from pyro_svae.datasets import simulate

    adata = simulate(n_perturbations=args.n_perturbations, n_latent=args.n_latent, n_genes=args.n_genes,
                     n_cells_per_perturbation=args.n_cells, n_control=args.n_control,
                     n_combinations=args.n_combinations, interaction=interaction, seed=seed)
    pairs = sorted(adata.uns["combinations"])
    n_held = max(1, int(round(args.held_out * len(pairs))))
    held = sorted(np.random.default_rng(seed).choice(pairs, size=n_held, replace=False))
    return adata, [str(p) for p in held]


def run(interaction: float, seed: int, prior: str, args) -> pd.DataFrame:
    import torch

    torch.set_num_threads(1)
    import pyro_svae
    from pyro_svae import evaluation

    adata, held = screen(interaction, seed, args)
    labels = adata.obs["perturbation"].astype(str).to_numpy()

    def part(mask):
        result = adata[mask].copy()
        result.obs["perturbation"] = result.obs["perturbation"].cat.remove_unused_categories()
        return result

    train, test = part(~np.isin(labels, held)), part(np.isin(labels, held))
    start = time.perf_counter()
    try:
        model = pyro_svae.fit(train, n_latent=args.n_latent, prior=prior, seed=seed, max_epochs=args.max_epochs,
                              progress=False)
    except Exception as error:  # a prior that cannot be fitted here is reported, not fatal to the others
        message = " ".join(f"{type(error).__name__}: {error}".split())[:160]
        print(f"{prior} (interaction {interaction:g}, seed {seed}): fit failed: {message}")
        return pd.DataFrame({"prior": [prior], "interaction": [interaction], "seed": [seed], "error": [message]})
    fit_seconds = time.perf_counter() - start
    table = evaluation.evaluate(model, test, train, metrics=METRICS, n_cells=args.n_predicted, seed=seed,
                                top_n=args.top_n, n_samples=args.iw_samples)
    table["method"] = table["method"].replace({"model": prior})
    return table.assign(interaction=interaction, seed=seed, prior=prior, fit_seconds=fit_seconds,
                        epochs=len(model.history))


def summarise(table: pd.DataFrame, priors: list) -> pd.DataFrame:
    """Mean over held-out pairs and seeds per metric, method and interaction; baselines counted once."""
    rows = table[table["method"].isin(priors) | (table["prior"] == priors[0])]
    return rows.groupby(["metric", "method", "interaction"])["value"].mean().unstack("interaction")


def write(summary: pd.DataFrame, table: pd.DataFrame, failed: pd.DataFrame, args, out: Path) -> None:
    n_held = table.groupby(["interaction", "seed"])["perturbation"].nunique().iloc[0]
    command = (f"python benchmarks/combinations.py --interactions {' '.join(map(str, args.interactions))} --priors "
               f"{' '.join(args.priors)} --seeds {' '.join(map(str, args.seeds))} --n-perturbations "
               f"{args.n_perturbations} --n-combinations {args.n_combinations} --n-latent {args.n_latent} --n-genes "
               f"{args.n_genes} --n-cells {args.n_cells} --n-control {args.n_control} --held-out {args.held_out} "
               f"--max-epochs {args.max_epochs} --n-predicted {args.n_predicted} --iw-samples {args.iw_samples}"
               + ("" if args.top_n is None else f" --top-n {args.top_n}"))
    lines = ["# Unseen combinations on simulated screens: the model against the additive baseline", "",
             f"`{command}` — `datasets.simulate` with {args.n_combinations} pairs, {n_held} of them held out of "
             f"training (their members seen), {args.n_cells} cells per label; `fit(n_latent={args.n_latent})` per "
             "prior, `pyro_svae.evaluation.evaluate` on the held-out pairs (methods: docs/evaluation.md). Mean over "
             f"held-out pairs and {len(args.seeds)} seed(s); columns: the interaction (0: the pairs' latent shifts "
             "add up exactly). Higher is better except for `mae`.", ""]
    for metric in [m for m in METRICS if m in summary.index.get_level_values(0)]:
        block = summary.loc[metric]
        lines += [f"## {metric}", "", "| method | " + " | ".join(f"interaction {i:g}" for i in block.columns) + " |",
                  "|---|" + "---|" * len(block.columns)]
        lines += [f"| {method} | " + " | ".join(f"{v:.3f}" for v in row) + " |" for method, row in block.iterrows()]
        lines.append("")
    timing = table.groupby(["prior", "interaction", "seed"])[["fit_seconds", "epochs"]].first().groupby("prior").mean()
    lines += ["## Fit time per prior (mean, one CPU thread)", "", "| prior | fit seconds | epochs |", "|---|---|---|"]
    lines += [f"| {p} | {r['fit_seconds']:.0f} | {r['epochs']:.0f} |" for p, r in timing.iterrows()]
    if len(failed):
        lines += ["", "## Fits that failed (left out above)", ""]
        lines += [f"- {r.prior} (interaction {r.interaction:g}, seed {r.seed}): `{r.error}`" for r in failed.itertuples()]
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    table.to_csv(out / f"{args.name}.csv", index=False)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in METRICS if m in summary.index.get_level_values(0)]
    methods = sorted(set(summary.index.get_level_values(1)))
    colours = dict(zip(methods, plt.cm.tab10(np.linspace(0, 1, 10))))
    fig, axes = plt.subplots(2, (len(metrics) + 1) // 2, figsize=(4.5 * ((len(metrics) + 1) // 2), 8), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        for method, row in summary.loc[metric].iterrows():
            ax.plot(row.index, row.to_numpy(), marker="o", color=colours[method], label=method,
                    linestyle="-" if method in args.priors else "--")
        ax.set_xticks(args.interactions)
        ax.set_xlabel("interaction (0: additive in latent space)")
        ax.set_title(metric + (" (lower is better)" if metric == "mae" else ""))
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], color=colours[m], marker="o", linestyle="-" if m in args.priors else "--", label=m)
               for m in methods]
    fig.legend(handles=handles, loc="lower center", ncol=len(methods), fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(out / f"{args.name}.png", dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interactions", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    parser.add_argument("--priors", nargs="+", default=["spike_and_slab", "gaussian"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n-perturbations", type=int, default=20)
    parser.add_argument("--n-combinations", type=int, default=40)
    parser.add_argument("--held-out", type=float, default=0.5, help="share of the pairs held out of training")
    parser.add_argument("--n-latent", type=int, default=5)
    parser.add_argument("--n-genes", type=int, default=100)
    parser.add_argument("--n-cells", type=int, default=150, help="cells per perturbation and pair")
    parser.add_argument("--n-control", type=int, default=300)
    parser.add_argument("--max-epochs", default="auto", help="fit epochs (a number for a quick smoke run)")
    parser.add_argument("--n-predicted", type=int, default=500, help="predicted cells per label")
    parser.add_argument("--top-n", type=int, default=20, help="DE genes of pearson_delta_de / overlap_at_N "
                        "(0: all significant ones); most genes of a simulated screen change")
    parser.add_argument("--iw-samples", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--name", default="combinations")
    args = parser.parse_args()
    args.max_epochs = args.max_epochs if args.max_epochs == "auto" else int(args.max_epochs)
    args.top_n = args.top_n or None
    jobs = [(i, s, p, args) for i in args.interactions for s in args.seeds for p in args.priors]
    with ProcessPoolExecutor(args.jobs) as pool:
        table = pd.concat(pool.map(run, *zip(*jobs)), ignore_index=True)
    failed = table[table["error"].notna()] if "error" in table else table.iloc[:0]
    table = table[table["error"].isna()].drop(columns="error") if "error" in table else table
    if table.empty:
        raise SystemExit(f"Every fit failed:\n{failed.to_string(index=False)}")
    summary = summarise(table, [p for p in args.priors if p in set(table["prior"])])
    pd.set_option("display.width", 200)
    print(summary.round(3).to_string())
    write(summary, table, failed, args, Path(args.out))
    print(f"Wrote {Path(args.out) / args.name}.md, .csv and .png")


if __name__ == "__main__":
    main()
