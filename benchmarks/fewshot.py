"""Few-shot prediction of held-out knockouts on a real screen (Papalexi et al. 2021), against baselines.

    python benchmarks/fewshot.py [--data ../shared/data/papalexi2021_lowmoi.h5ad] [--priors ...] [--k 5 10 20 50]
                                 [--group-size 3] [--jobs 2]

The screen is read with ``pyro_svae.datasets.papalexi2021(min_guide_fraction=0.8, min_cells=50)``.
Knockouts with a phenotype (at least ``--min-de-genes`` genes changed against the controls,
``datasets.preprocess.perturbation_phenotypes``; the knockout's own gene not counted) and enough
cells are held out in turn, ``--group-size`` at a time. For each group and each prior of
``pyro_svae.priors.PRIORS`` a model is fitted once on every other cell (all controls included,
the replicate as batch); then, for each ``k``, it is transferred (``SVAE.transfer``) on ``k``
cells of each held-out knockout and scored by ``pyro_svae.evaluation.evaluate`` on the remaining
cells (the same cells for every ``k``: the first ``max(k)`` cells of each knockout form the pool
the ``k`` seen cells are drawn from), against the baselines ``control``, ``training_mean``,
``k_cell_mean`` (the mean of the same ``k`` cells), ``linear`` (the knockouts named like a gene
of the screen) and ``split_half``; held-out IWELBO per cell too. Writes ``<out>/<name>.md`` and
``.png`` (default ``benchmarks/results/fewshot``).

Tiny settings for a smoke run (about a minute):
``--priors gaussian --k 5 10 --max-groups 1 --max-epochs 2 --transfer-epochs 2 --n-cells 50 --iw-samples 5``
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
DATA = ROOT / ".." / "shared" / "data" / "papalexi2021_lowmoi.h5ad"
METRICS = ["pearson_delta", "pearson_delta_de", "mae", "discrimination_score", "overlap_at_N", "iwelbo"]


def load(path):
    import pyro_svae

    return pyro_svae.datasets.papalexi2021(path, min_guide_fraction=0.8, min_cells=50)


def held_out_groups(adata, min_de_genes: int, min_cells: int, group_size: int, seed: int) -> list:
    """Knockouts with a phenotype and at least ``min_cells`` cells, shuffled, in groups of ``group_size``."""
    from pyro_svae.datasets import preprocess

    table = preprocess.perturbation_phenotypes(adata.X, adata.obs["perturbation"].astype(str), "control",
                                               gene_symbols=adata.var_names)
    chosen = sorted(table.index[(table["n_de_genes"] >= min_de_genes) & (table["n_cells"] >= min_cells)])
    chosen = list(np.random.default_rng(seed).permutation(chosen))
    return [sorted(str(c) for c in chosen[i:i + group_size]) for i in range(0, len(chosen), group_size)], table


def split(adata, group, max_k: int, seed: int):
    """Training cells (every label but the group's), the pool of seen cells and the test cells."""
    rng = np.random.default_rng(seed)
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    pools, tests = {}, []
    for knockout in group:
        cells = rng.permutation(np.flatnonzero(labels == knockout))
        pools[knockout], tests = cells[:max_k], tests + [cells[max_k:]]

    def part(index):
        result = adata[np.sort(index)].copy()
        result.obs["perturbation"] = result.obs["perturbation"].cat.remove_unused_categories()
        return result

    return part(np.flatnonzero(~np.isin(labels, group))), pools, part(np.concatenate(tests)), part


def run(prior: str, group: list, args) -> pd.DataFrame:
    import torch

    torch.set_num_threads(1)
    import pyro_svae
    from pyro_svae import evaluation
    from pyro_svae.warm_start import was_rerotated

    adata = load(args.data)
    train, pools, test, part = split(adata, group, max(args.k), args.seed)
    start = time.perf_counter()
    try:
        model = pyro_svae.fit(train, n_latent=args.n_latent, prior=prior, batch_key="bio_rep", seed=args.seed,
                              max_epochs=args.max_epochs, progress=False)
    except Exception as error:  # a prior that cannot be fitted here is reported, not fatal to the others
        print(f"{prior} on {group}: fit failed: {type(error).__name__}: {str(error)[:200]}")
        message = " ".join(f"{type(error).__name__}: {error}".split())[:160]
        return pd.DataFrame({"prior": [prior], "group": [", ".join(group)], "error": [message]})
    fit_seconds = time.perf_counter() - start
    rerotated = was_rerotated(model.history)  # a second sparse stage after warm_start.residual_rotation
    tables = []
    for k in args.k:
        seen = part(np.concatenate([pool[:k] for pool in pools.values()]))
        start = time.perf_counter()
        transferred = model.transfer(seen, max_epochs=args.transfer_epochs, seed=args.seed)
        transfer_seconds = time.perf_counter() - start
        table = evaluation.evaluate(transferred, test, train, seen=seen, metrics=METRICS, n_cells=args.n_cells,
                                    seed=args.seed, top_n=args.top_n, n_samples=args.iw_samples)
        table["method"] = table["method"].replace({"model": prior})
        tables.append(table.assign(k=k, group=", ".join(group), prior=prior, fit_seconds=fit_seconds,
                                   transfer_seconds=transfer_seconds, epochs=len(model.history),
                                   rerotated=rerotated))
    return pd.concat(tables, ignore_index=True)


def _rows(table: pd.DataFrame, priors: list) -> pd.DataFrame:
    """Every prior's own rows, and the baselines' rows once (those scored beside the first prior)."""
    return table[table["method"].isin(priors) | (table["prior"] == priors[0])]


def summarise(table: pd.DataFrame, priors: list, how: str = "mean") -> pd.DataFrame:
    """Mean (or median) over held-out knockouts per method, metric and k; baselines counted once."""
    rows = _rows(table, priors)
    summary = rows.groupby(["metric", "method", "k"])["value"].agg(how).unstack("k")
    counts = rows.groupby(["metric", "method"])["perturbation"].nunique().rename("n")
    return summary.join(counts)


def write(summary: pd.DataFrame, table: pd.DataFrame, priors: list, groups, phenotypes, failed, args,
          out: Path) -> None:
    cells = dict(zip(phenotypes.index, phenotypes["n_cells"]))
    lines = ["# Few-shot prediction of held-out knockouts: Papalexi 2021 (ECCITE-seq)", "",
             f"`python benchmarks/fewshot.py --priors {' '.join(args.priors)} --k {' '.join(map(str, args.k))} "
             f"--group-size {args.group_size} "
             f"--max-epochs {args.max_epochs} --transfer-epochs {args.transfer_epochs} --n-cells {args.n_cells} "
             f"--iw-samples {args.iw_samples} --seed {args.seed}` — `datasets.papalexi2021(min_guide_fraction=0.8, "
             f"min_cells=50)`; knockouts with at least {args.min_de_genes} DE genes held out in groups: "
             + "; ".join(", ".join(f"{g} ({cells[g]} cells)" for g in group) for group in groups) + ".",
             f"`fit(n_latent={args.n_latent}, batch_key=\"bio_rep\")` per prior and group, `transfer` on k cells of "
             "each held-out knockout, `pyro_svae.evaluation.evaluate` on the remaining cells (the same for every k). "
             "Mean over held-out knockouts; methods are the priors (the model) and the baselines "
             "(docs/evaluation.md); `knockouts`: how many held-out knockouts a method applies to (`linear`: those named "
             "like a gene of the screen). Higher is better except for `mae`.", ""]
    for metric in [m for m in METRICS if m in summary.index.get_level_values(0)]:
        block = summary.loc[metric]
        ks = [k for k in block.columns if k != "n"]
        lines += [f"## {metric}", "", "| method | knockouts | " + " | ".join(f"k = {k}" for k in ks) + " |",
                  "|---|---|" + "---|" * len(ks)]
        lines += [f"| {method} | {row['n']:.0f} | " + " | ".join(f"{row[k]:.3f}" for k in ks) + " |"
                  for method, row in block.iterrows()]
        lines.append("")
    median = summarise(table, priors, "median").loc["pearson_delta"]
    ks = [k for k in median.columns if k != "n"]
    lines += ["## Median pearson_delta over the held-out knockouts", "",
              "The goal's statistic: the model's median against the k-cell mean's and the training mean's.", "",
              "| method | knockouts | " + " | ".join(f"k = {k}" for k in ks) + " |", "|---|---|" + "---|" * len(ks)]
    lines += [f"| {method} | {row['n']:.0f} | " + " | ".join(f"{row[k]:.3f}" for k in ks) + " |"
              for method, row in median.iterrows()]
    rows = _rows(table, priors)
    per_knockout = rows[rows["metric"] == "pearson_delta"].pivot_table(index="perturbation", columns=["method", "k"],
                                                                       values="value")
    lines += ["", "## pearson_delta per held-out knockout", "",
              "Columns: method, k (`linear` and the other baselines that do not use the seen cells are the same at "
              "every k: shown at the first k only).", ""]
    columns = [(m, k) for m, k in per_knockout.columns
               if m != "control" and (m in priors or m == "k_cell_mean" or k == ks[0])]
    lines += ["| knockout | " + " | ".join(f"{m} {k}" for m, k in columns) + " |", "|---|" + "---|" * len(columns)]
    lines += [f"| {knockout} | " + " | ".join(f"{row[c]:.2f}" for c in columns) + " |"
              for knockout, row in per_knockout.iterrows()]
    lines.append("")
    timing = table.groupby(["prior", "group"])[["fit_seconds", "epochs", "rerotated"]].first().astype(float)
    timing = timing.groupby("prior").agg(fit_seconds=("fit_seconds", "mean"), epochs=("epochs", "mean"),
                                         rerotated=("rerotated", "sum"), groups=("epochs", "size"))
    lines += ["## Fit time per prior (mean over groups, one CPU thread)", "",
              "`re-rotated`: fits that `fit` rotated again once settled (a second sparse stage; docs/training.md).", "",
              "| prior | fit seconds | epochs | re-rotated |", "|---|---|---|---|"]
    lines += [f"| {p} | {r['fit_seconds']:.0f} | {r['epochs']:.0f} | {r['rerotated']:.0f} of {r['groups']:.0f} |"
              for p, r in timing.iterrows()]
    if len(failed):
        lines += ["", "## Fits that failed (left out above)", ""]
        lines += [f"- {row.prior} (held out {row.group}): `{row.error}`" for row in failed.itertuples()]
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    table.to_csv(out / f"{args.name}.csv", index=False)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in METRICS if m in summary.index.get_level_values(0)]
    methods = sorted(set(summary.index.get_level_values(1)))
    colours = dict(zip(methods, plt.cm.tab10(np.linspace(0, 1, 10))[:len(methods)] if len(methods) <= 10
                       else plt.cm.tab20(np.linspace(0, 1, len(methods)))))
    fig, axes = plt.subplots(2, (len(metrics) + 1) // 2, figsize=(4.5 * ((len(metrics) + 1) // 2), 8), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        for method, row in summary.loc[metric].drop(columns="n").iterrows():
            ax.plot(row.index, row.to_numpy(), marker="o", color=colours[method], label=method,
                    linestyle="--" if method not in args.priors else "-")
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(args.k, [str(k) for k in args.k])
        ax.set_xlabel("cells seen per held-out knockout (k)")
        ax.set_title(metric + (" (lower is better)" if metric == "mae" else ""))
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], color=colours[m], marker="o", linestyle="-" if m in args.priors else "--", label=m)
               for m in methods]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(methods), 7), fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(out / f"{args.name}.png", dpi=120)


def main():
    import pyro_svae

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--priors", nargs="+", default=list(pyro_svae.priors.PRIORS))
    parser.add_argument("--k", type=int, nargs="+", default=[5, 10, 20, 50])
    parser.add_argument("--group-size", type=int, default=3)
    parser.add_argument("--max-groups", type=int, default=None, help="only the first groups (a smoke run)")
    parser.add_argument("--min-de-genes", type=int, default=10)
    parser.add_argument("--min-test-cells", type=int, default=20)
    parser.add_argument("--n-latent", type=int, default=10)
    parser.add_argument("--max-epochs", default="auto", help="fit epochs (a number for a quick smoke run)")
    parser.add_argument("--transfer-epochs", default="auto", help="transfer epochs (a number for a smoke run)")
    parser.add_argument("--n-cells", type=int, default=500, help="predicted cells per label")
    parser.add_argument("--top-n", type=int, default=None, help="DE genes of pearson_delta_de / overlap_at_N")
    parser.add_argument("--iw-samples", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--name", default="fewshot")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from <out>/<name>.csv")
    args = parser.parse_args()
    if not Path(args.data).is_file():
        raise SystemExit(f"{args.data} not found: this benchmark needs the Papalexi 2021 file (see shared/data/README.md).")
    args.max_epochs = args.max_epochs if args.max_epochs == "auto" else int(args.max_epochs)
    args.transfer_epochs = args.transfer_epochs if args.transfer_epochs == "auto" else int(args.transfer_epochs)
    args.k = sorted(args.k)
    groups, phenotypes = held_out_groups(load(args.data), args.min_de_genes, max(args.k) + args.min_test_cells,
                                         args.group_size, args.seed)
    groups = groups[:args.max_groups]
    print(f"held-out groups: {groups}")
    if args.report_only:
        table = pd.read_csv(Path(args.out) / f"{args.name}.csv")
    else:
        jobs = [(prior, group, args) for group in groups for prior in args.priors]
        with ProcessPoolExecutor(args.jobs) as pool:
            table = pd.concat(pool.map(run, *zip(*jobs)), ignore_index=True)
    failed = table[table["error"].notna()] if "error" in table else table.iloc[:0]
    table = table[table["error"].isna()].drop(columns="error") if "error" in table else table
    if table.empty:
        raise SystemExit(f"Every fit failed:\n{failed.to_string(index=False)}")
    table = table.astype({"k": int})
    priors = [p for p in args.priors if p in set(table["prior"])]
    summary = summarise(table, priors)
    pd.set_option("display.width", 200)
    print(summary.round(3).to_string())
    if len(failed):
        print(f"failed fits: {failed[['prior', 'group', 'error']].to_string(index=False)}")
    write(summary, table, priors, groups, phenotypes, failed, args, Path(args.out))
    print(f"Wrote {Path(args.out) / args.name}.md, .csv and .png")


if __name__ == "__main__":
    main()
