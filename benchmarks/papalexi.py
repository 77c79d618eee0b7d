"""The Papalexi et al. (2021) ECCITE-seq screen: target calls against the phenotypes, the IFN-gamma
pathway, few-shot transfer, the choice of n_latent, and what the latents mean in gene space.

    python benchmarks/papalexi.py [--data ../shared/data/papalexi2021_lowmoi.h5ad] [--n-latent 10] [--jobs 2]
    python benchmarks/papalexi.py --skip-selection        # without the n_latent sweep (the slowest part)

1. Calls. ``fit`` with its defaults (replicate as batch) on the whole screen
   (``datasets.papalexi2021(min_guide_fraction=0.8, min_cells=50)``); targets called at FDR 0.1
   against the loader's phenotype proxy (``preprocess.perturbation_phenotypes``: genes changed at
   FDR 0.05 by Welch t-tests against the controls, the knockout's own gene excluded; a phenotype is
   10 genes or more). Goals: every knockout with a phenotype gets a target, none without does, and
   the IFN-gamma receptor pathway (IFNGR1, IFNGR2, JAK2, STAT1) shares a latent.
2. Gene programs: the top genes of the IFN-gamma latent, and its enrichment for the IFN-responsive
   genes the trial reported (STAT1, PSMB9, UBE2L6, STAT2).
3. Few-shot transfer: STAT1, IFNGR1, IRF1, SMAD4 and BRD4 held out of training and transferred on
   k = 5, 10, 20 and 100 of their cells (the rest score it), ``spike_and_slab`` and ``gaussian``:
   do STAT1 and IFNGR1 land on the latent of IFNGR2 and JAK2; held-out IWELBO sparse against dense.
4. ``selection.select_model`` over ``n_latent`` in 6, 8, ..., 16 (two seeds each; ``--selection-n-latent``).

Writes ``benchmarks/results/papalexi.md`` and ``papalexi.png``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from recovery_grid import markdown

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DATA = ROOT / ".." / "shared" / "data" / "papalexi2021_lowmoi.h5ad"
IFN_GAMMA = ["IFNGR1", "IFNGR2", "JAK2", "STAT1"]
RESPONSIVE = ["STAT1", "PSMB9", "UBE2L6", "STAT2"]
HELD_OUT = ["STAT1", "IFNGR1", "IRF1", "SMAD4", "BRD4"]
CELLS = [5, 10, 20, 100]
MIN_DE_GENES = 10


def load(path):
    import pyro_svae

    return pyro_svae.datasets.papalexi2021(path, min_guide_fraction=0.8, min_cells=50)


def phenotypes(adata) -> pd.DataFrame:
    from pyro_svae.datasets.preprocess import perturbation_phenotypes

    table = perturbation_phenotypes(adata.X, adata.obs["perturbation"].astype(str), "control",
                                    gene_symbols=list(adata.var_names))
    table["phenotype"] = table["n_de_genes"] >= MIN_DE_GENES
    return table


def _fit(adata, n_latent: int, seed: int = 0, **options):
    import torch

    torch.set_num_threads(1)
    import pyro_svae

    return pyro_svae.fit(adata, batch_key="bio_rep", n_latent=n_latent, seed=seed, progress=False, **options)


def calls_job(path, n_latent: int) -> dict:
    from pyro_svae import interpretation

    adata = load(path)
    start = time.perf_counter()
    model = _fit(adata, n_latent)
    seconds = time.perf_counter() - start
    calls = model.target_calls(fdr=0.1)
    programs = model.gene_programs()
    return {"calls": calls, "pips": model.intervention_targets(), "shifts": model.shifts(), "programs": programs,
            "enrichment": interpretation.enrichment(programs, {"IFN-responsive": RESPONSIVE}, min_genes=3,
                                                    use_decoupler=False),
            "history": model.history, "seconds": seconds}


def transfer_job(path, n_latent: int, method: str) -> list:
    adata = load(path)
    rng = np.random.default_rng(0)
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    pools = {p: rng.permutation(np.flatnonzero(labels == p)) for p in HELD_OUT}
    train = adata[~np.isin(labels, HELD_OUT)].copy()
    model = _fit(train, n_latent, **({} if method == "spike_and_slab" else {"prior": method}))
    pips = model.intervention_targets()
    pathway = [k for k in pips.columns if (pips.loc[["IFNGR2", "JAK2"], k] > 0.5).all()]
    rows = []
    for k in CELLS:
        usable = [p for p in HELD_OUT if len(pools[p]) >= k + 40]
        seen = np.sort(np.concatenate([pools[p][:k] for p in usable]))
        test = np.sort(np.concatenate([pools[p][k:] for p in usable]))
        transferred = model.transfer(adata[seen].copy(), seed=0)
        new = transferred.intervention_targets().loc[usable]
        iwelbo = transferred.marginal_log_likelihood(adata[test].copy(), n_samples=50, by="perturbation", seed=0)
        for p in usable:
            rows.append({"method": method, "cells": k, "perturbation": p,
                         "targets (PIP > 0.5)": [int(c) for c in new.columns[new.loc[p] > 0.5]],
                         "on the IFNGR2/JAK2 latent": bool(pathway) and bool((new.loc[p, pathway] > 0.5).any()),
                         "heldout_iwelbo": float(iwelbo[p])})
    return rows


def selection_job(path, n_latent) -> pd.DataFrame:
    import torch

    torch.set_num_threads(1)
    from pyro_svae.selection import select_model

    return select_model(load(path), n_latent=n_latent, batch_key="bio_rep")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--n-latent", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--skip-selection", action="store_true")
    parser.add_argument("--selection-n-latent", type=int, nargs="+", default=[6, 8, 10, 12, 14, 16],
                        help="the n_latent values select_model compares")
    args = parser.parse_args(argv)
    adata = load(args.data)
    table = phenotypes(adata)
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("fork")) as pool:
        calls_future = pool.submit(calls_job, args.data, args.n_latent)
        transfer_futures = [pool.submit(transfer_job, args.data, args.n_latent, m) for m in ("spike_and_slab", "gaussian")]
        selection = [pool.submit(selection_job, args.data, [k]) for k in args.selection_n_latent] if not args.skip_selection else []
        fitted = calls_future.result()
        transfer = pd.DataFrame([row for f in transfer_futures for row in f.result()])
        if selection:
            from pyro_svae.selection import recommend

            selection = recommend(pd.concat([f.result() for f in selection], ignore_index=True))
        else:
            selection = None
    report(table, fitted, transfer, selection, args)


def _stages(history) -> str:
    """Epochs per stage of a fit's history, e.g. ``dense 74, sparse 125`` (``re-rotated``: a second sparse stage)."""
    if "stage" not in history:
        return f"sparse {len(history)}"
    counts = history["stage"].value_counts(sort=False)
    return ", ".join(f"{stage} {n}" for stage, n in counts.items())


def previous_selection(page: Path) -> list:
    """The ``Choosing n_latent`` section of an earlier ``page`` (``--skip-selection`` keeps it), marked as
    earlier; none if the page has none."""
    text = page.read_text() if page.exists() else ""
    if "## Choosing n_latent" not in text:
        return []
    section = text.split("## Choosing n_latent", 1)[1].split("\n## ", 1)[0].strip("\n").splitlines()
    note = "Kept from an earlier run of this script (this one ran with `--skip-selection`): "
    if not section[0].startswith("Kept from an earlier run"):
        section = [note + "the code and defaults may have changed since.", ""] + section
    return ["## Choosing n_latent", ""] + section + [""]


def report(table, fitted, transfer, selection, args):
    calls = fitted["calls"]
    by_knockout = calls.sort_values("latent").groupby("perturbation")  # each knockout's calls in latent order
    called = by_knockout["latent"].apply(lambda s: [int(k) for k in s])
    pips = by_knockout["pip"].apply(lambda s: [round(float(v), 3) for v in s])
    table["latents called (FDR 0.1)"] = [called.get(p, []) for p in table.index]
    table["their PIPs"] = [pips.get(p, []) for p in table.index]
    table["called"] = table["latents called (FDR 0.1)"].map(len) > 0
    hits = table["phenotype"] & table["called"]
    false_calls = ~table["phenotype"] & table["called"]
    shared = set.intersection(*[set(called.get(p, [])) for p in IFN_GAMMA])
    programs = fitted["programs"]
    scores, pvalues = fitted["enrichment"]
    lines = ["# The Papalexi 2021 screen", "", f"`python benchmarks/papalexi.py` — `n_latent={args.n_latent}`, the "
             "replicate as batch, every other `fit` setting at its default; one CPU thread per fit "
             f"({fitted['seconds']:.0f} s for the whole screen; epochs per stage: {_stages(fitted['history'])}).", "",
             "## Target calls against the phenotypes", "",
             f"Knockouts with a phenotype ({MIN_DE_GENES}+ genes changed) called: {int(hits.sum())} of "
             f"{int(table['phenotype'].sum())}; knockouts without one called: {int(false_calls.sum())} of "
             f"{int((~table['phenotype']).sum())}. IFN-gamma receptor pathway ({', '.join(IFN_GAMMA)}) shares "
             f"latent(s): {sorted(shared) if shared else 'none'}. `target_calls(fdr=0.1)` takes the entries "
             "with PIP > 0.5 by decreasing PIP while their mean 1 - PIP stays at most 0.1 (without the PIP > 0.5 "
             "bound, `min_pip=0`, near-certain entries leave budget for entries of low PIP): the smallest PIP "
             f"called here is {calls.attrs['threshold']:.3f} (expected FDP {calls.attrs['expected_fdp']:.3f}).", "",
             markdown(table.sort_values("n_de_genes", ascending=False)), ""]
    if shared:
        from pyro_svae.interpretation import top_genes

        k = sorted(shared)[0]
        top = top_genes(programs, k, n=12)
        ranks = programs.loc[k].abs().rank(ascending=False)
        lines += [f"## The IFN-gamma latent ({k}) in gene space", "",
                  "Its top genes (d log mean expression / d latent):", "", markdown(top.set_index("gene")), "",
                  "Rank of the IFN-responsive genes among the 299 by |effect|: "
                  + ", ".join(f"{g} {int(ranks[g])}" for g in RESPONSIVE if g in ranks) + ".",
                  f"Enrichment (ULM t-value, p): {scores.loc[k].iloc[0]:.2f}, {pvalues.loc[k].iloc[0]:.2g}.", ""]
    if transfer is not None and len(transfer):
        lines += ["## Few-shot transfer", "", f"{', '.join(HELD_OUT)} held out of training, transferred on k cells each.",
                  "", markdown(transfer.set_index(["method", "cells", "perturbation"])), ""]
        iwelbo = transfer.pivot_table(index="cells", columns="method", values="heldout_iwelbo")
        lines += ["Held-out IWELBO per cell, mean over the held-out knockouts:", "", markdown(iwelbo), ""]
    if selection is not None:
        sweep = ", ".join(map(str, args.selection_n_latent))
        edge = (" The recommended setting is the largest tried and has the best held-out IWELBO: a larger "
                "`n_latent` may do better (`selection.recommend` warns)." if selection.attrs.get("at_largest") else "")
        lines += ["## Choosing n_latent", "", f"`pyro_svae.selection.select_model(adata, n_latent=({sweep}), "
                  "batch_key='bio_rep')`: 80% of each label's cells fit, 20% score; two seeds. Recommended "
                  f"from: {selection.attrs.get('criterion', 'all settings')}.{edge}", "",
                  markdown(selection.set_index("n_latent")), ""]
    else:
        lines += previous_selection(RESULTS / "papalexi.md")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "papalexi.md").write_text("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pyro_svae import pl

    fig, axes = plt.subplots(1, 2, figsize=(12, 6), gridspec_kw={"width_ratios": [1, 1]})
    pl.shifts(fitted["shifts"], inclusion=fitted["pips"], ax=axes[0])
    axes[0].set_title("mean shifts; dots: PIP > 0.5", fontsize=10)
    latents = sorted(shared) if shared else list(programs.index[:3])
    pl.gene_programs(programs, latents=latents, n_genes=10, ax=axes[1])
    axes[1].set_title("top genes of the IFN-gamma latent", fontsize=10)
    fig.tight_layout()
    fig.savefig(RESULTS / "papalexi.png", dpi=110)
    print("\n".join(lines))
    print(f"Wrote {RESULTS / 'papalexi.md'} and .png")


if __name__ == "__main__":
    main()
