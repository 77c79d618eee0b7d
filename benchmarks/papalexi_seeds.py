"""Are the Papalexi target calls a property of the screen or of one fit? The calls over fit seeds and n_latent.

    python benchmarks/papalexi_seeds.py [--seeds 0 1 2 3] [--n-latent 10 12] [--data ...] [--jobs 2] [--report-only]

``benchmarks/papalexi.py`` fits the screen once (``n_latent=10``, seed 0) and scores its calls against
the loader's phenotype proxy (goal: every knockout with 10+ genes changed gets a target at FDR 0.1,
none without does, and IFNGR1, IFNGR2, JAK2 and STAT1 share a latent). Here the same fit
(``papalexi._fit``: the replicate as batch, every other setting at its default) runs for each fit seed
and each ``n_latent`` (``select_model`` recommended 12 on this screen), and for every knockout:

- ``called``: the share of fits with a target at ``target_calls(fdr=0.1)``;
- ``max PIP``: its largest inclusion probability, median over fits;
- ``largest shift``: the largest |mean latent of its cells - the controls' mean latent| over the
  latents, in prior SDs (the latent's within-perturbation SD is 1 under the model), median over fits,
  beside ``min_shift``, the smallest shift the prior lets count as a target (``fit`` resolves
  ``"auto"`` per fit). A knockout whose phenotype the latents do not carry has a small largest shift
  whatever the sparsity; one that the sparsity keeps out has a shift near or above ``min_shift``.

Agreement between fits does not need their latents matched: ``knockouts`` is the Jaccard index of the
sets of knockouts called, ``co-targeted pairs`` that of the pairs of knockouts called on a common latent
(which perturbations act on the same process: the biologist's question), over every pair of fits with
the same ``n_latent``. Each run also records ``closeness`` and ``rerotated``: what ``fit``'s check for
mixed latents measured and whether it rotated the fit again (``warm_start.REROTATE_BELOW``).

Writes ``benchmarks/results/papalexi_seeds.md`` and ``.png`` (runs in ``papalexi_seeds_runs.jsonl``).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from papalexi import DATA, IFN_GAMMA, _fit, load, phenotypes  # noqa: E402
from recovery_grid import RESULTS, markdown, read_runs, run_and_record  # noqa: E402
from residual_mixing import shifts_from_origin  # noqa: E402

RUNS = RESULTS / "papalexi_seeds_runs.jsonl"


def calls_row(path: str, seed: int, n_latent: int) -> dict:
    """One fit of the screen: its calls at FDR 0.1, each knockout's largest PIP and largest empirical shift."""
    from pyro_svae import warm_start

    adata = load(path)
    start = time.perf_counter()
    model = _fit(adata, n_latent, seed=seed)
    seconds = time.perf_counter() - start
    calls = model.target_calls(fdr=0.1)
    pips = model.intervention_targets()
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    shifts = shifts_from_origin(model.get_latent(adata), labels, has_controls=True).drop(index="control")
    return {"seed": seed, "n_latent": n_latent, "seconds": seconds,
            "min_shift": float(model.components.config.prior_options["min_shift"]),
            "closeness": warm_start.rotation_closeness(model.history), "rerotated": warm_start.was_rerotated(model.history),
            "calls": {p: sorted(int(k) for k in group["latent"]) for p, group in calls.groupby("perturbation")},
            "max_pip": pips.max(1).astype(float).to_dict(), "largest_shift": shifts.abs().max(1).astype(float).to_dict()}


def co_targeted(calls: dict) -> set:
    """The pairs of knockouts called on a common latent (``calls``: knockout -> latents)."""
    return {tuple(sorted((a, b))) for a, b in itertools.combinations(calls, 2) if set(calls[a]) & set(calls[b])}


def jaccard(a: set, b: set) -> float:
    """|a & b| / |a | b|; 1 when both are empty."""
    return len(a & b) / len(a | b) if a | b else 1.0


def fit_table(runs: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """One row per fit: knockouts with / without a phenotype called, and the IFN-gamma latent shared."""
    rows = []
    for run in runs.itertuples():
        called = {p for p, latents in run.calls.items() if latents}
        shared = set.intersection(*[set(run.calls.get(p, [])) for p in IFN_GAMMA])
        rows.append({"n_latent": run.n_latent, "seed": run.seed, "min_shift": run.min_shift,
                     "phenotype called": f"{len(called & set(table.index[table['phenotype']]))} of {int(table['phenotype'].sum())}",
                     "no phenotype called": f"{len(called - set(table.index[table['phenotype']]))} of {int((~table['phenotype']).sum())}",
                     "IFN-gamma shared latent": bool(shared), "seconds": run.seconds})
    return pd.DataFrame(rows).sort_values(["n_latent", "seed"]).set_index(["n_latent", "seed"])


def knockout_table(runs: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """One row per knockout with a phenotype (and any other ever called), per ``n_latent``: share called,
    median largest PIP, median largest empirical shift."""
    out = table[["n_cells", "n_de_genes", "phenotype"]].copy()
    for n_latent, group in runs.groupby("n_latent"):
        out[f"called ({n_latent})"] = [np.mean([bool(c.get(p)) for c in group["calls"]]) for p in out.index]
        out[f"max PIP ({n_latent})"] = [np.median([m[p] for m in group["max_pip"]]) for p in out.index]
        out[f"largest shift ({n_latent})"] = [np.median([s[p] for s in group["largest_shift"]]) for p in out.index]
    ever = out.filter(like="called (").max(1) > 0
    return out[out["phenotype"] | ever].sort_values("n_de_genes", ascending=False)


def agreement_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per ``n_latent``: the Jaccard indices of the module docstring over every pair of its fits."""
    rows = []
    for n_latent, group in runs.groupby("n_latent"):
        pairs = list(itertools.combinations(group["calls"], 2))
        called = [jaccard({p for p, k in a.items() if k}, {p for p, k in b.items() if k}) for a, b in pairs]
        shared = [jaccard(co_targeted(a), co_targeted(b)) for a, b in pairs]
        rows.append({"n_latent": n_latent, "fits": len(group), "pairs": len(pairs),
                     "knockouts (mean)": np.mean(called) if pairs else np.nan, "knockouts (min)": min(called, default=np.nan),
                     "co-targeted pairs (mean)": np.mean(shared) if pairs else np.nan,
                     "co-targeted pairs (min)": min(shared, default=np.nan)})
    return pd.DataFrame(rows).set_index("n_latent")


def figure(runs: pd.DataFrame, knockouts: pd.DataFrame, path: Path) -> None:
    """Left: each knockout's largest PIP per fit (x where called); right: its largest latent shift per fit
    against the fits' ``min_shift``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    runs = runs.sort_values(["n_latent", "seed"])
    names = list(knockouts.index)
    pip = np.array([[m[p] for m in runs["max_pip"]] for p in names])
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 0.35 * len(names) + 1.8), gridspec_kw={"width_ratios": [1.3, 1]})
    image = left.imshow(pip, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for i, p in enumerate(names):
        for j, calls in enumerate(runs["calls"]):
            if calls.get(p):
                left.text(j, i, "x", ha="center", va="center", color="white" if pip[i, j] < 0.6 else "black")
    left.set_xticks(range(len(runs)), [f"K={k}\ns{s}" for k, s in zip(runs["n_latent"], runs["seed"])], fontsize=8)
    left.set_yticks(range(len(names)), [f"{p} ({knockouts.loc[p, 'n_de_genes']})" for p in names], fontsize=8)
    left.set_title("largest PIP per knockout and fit (x: called at FDR 0.1)\nknockout (genes changed)", fontsize=9)
    fig.colorbar(image, ax=left, fraction=0.04)
    markers = dict(zip(sorted(runs["n_latent"].unique()), "os^D"))
    for j, run in enumerate(runs.itertuples()):
        offset = (list(markers).index(run.n_latent) - 0.5) * 0.25
        right.scatter([run.largest_shift[p] for p in names], np.arange(len(names)) + offset, marker=markers[run.n_latent],
                      s=18, color="C0" if run.n_latent == min(markers) else "C1",
                      label=f"n_latent {run.n_latent}" if run.seed == runs[runs.n_latent == run.n_latent].seed.min() else None)
        right.plot([run.min_shift] * 2, [-0.5, len(names) - 0.5], color="grey", lw=0.6, ls=":")
    right.set_yticks(range(len(names)), names, fontsize=8)
    right.set_ylim(len(names) - 0.5, -0.5)
    right.set_xscale("log")
    ticks = [0.2, 0.3, 0.5, 1, 2, 3]
    right.set_xticks(ticks, [f"{t:g}" for t in ticks])
    right.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    right.set_xlabel("largest |mean latent - controls'| (prior SDs)\ndotted: each fit's min_shift")
    right.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--n-latent", type=int, nargs="+", default=[10, 12])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    if not args.report_only:
        done = read_runs(RUNS)
        done = set(zip(done["seed"], done["n_latent"])) if len(done) else set()
        jobs = [(args.data, s, k) for k in args.n_latent for s in args.seeds if (s, k) not in done]
        run_and_record(calls_row, jobs, RUNS, args.jobs,
                       lambda r: f"n_latent {r['n_latent']} seed {r['seed']}: {sum(bool(v) for v in r['calls'].values())} "
                                 f"knockouts called, {r['seconds']:.0f} s")
    runs = read_runs(RUNS)
    table = phenotypes(load(args.data))  # indexed by knockout
    fits, knockouts, agreement = fit_table(runs, table), knockout_table(runs, table), agreement_table(runs)
    figure(runs, knockouts, RESULTS / "papalexi_seeds.png")
    lines = ["# Papalexi target calls over fit seeds and n_latent (papalexi_seeds)", "",
             f"`python benchmarks/papalexi_seeds.py --seeds {' '.join(map(str, sorted(runs['seed'].unique())))} "
             f"--n-latent {' '.join(map(str, sorted(runs['n_latent'].unique())))}` (one CPU thread per fit)", "",
             "Each fit as `benchmarks/papalexi.py`'s (the replicate as batch, every other `fit` setting at its "
             "default), with the fit seed and `n_latent` of its row. Goal 7: every knockout with a phenotype "
             "(10+ genes changed by the loader's proxy) called at FDR 0.1, none without, the IFN-gamma receptor "
             "pathway on a shared latent.", "", "![calls](papalexi_seeds.png)", "", "## Per fit", "", markdown(fits), "",
             "## Per knockout", "",
             "Knockouts with a phenotype and any other ever called. `called`: share of fits; `max PIP`, `largest "
             "shift` (prior SDs): medians over fits; in brackets the fits' `n_latent`.", "", markdown(knockouts), "",
             "## Agreement between fits", "",
             "Jaccard indices over every pair of fits with the same `n_latent`: of the knockouts called, and of the "
             "pairs of knockouts called on a common latent (no matching of latents needed).", "", markdown(agreement), ""]
    (RESULTS / "papalexi_seeds.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
