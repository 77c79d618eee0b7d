"""Transfer to held-out knockouts on a real screen (Papalexi et al. 2021, ECCITE-seq, THP-1 cells).

    python benchmarks/real_transfer.py [--data ../shared/data/papalexi2021_lowmoi.h5ad] [--priors ...] [--jobs 2]

The screen is read with ``pyro_svae.datasets.papalexi2021(min_guide_fraction=0.8, min_cells=50)``
(16,159 cells, 299 genes, 24 knockouts + non-targeting controls). Four knockouts are held out:
two of the IFN-gamma pathway whose other members stay in training (IFNGR2, JAK2) and two outside
it (SMAD4, CUL3). Every other label is split per label, 80% of its cells to train and 20% to test.
Each prior is fitted with the replicate as batch; the model then transfers to the held-out
knockouts on 25% of their cells (networks frozen) and is scored on the other 75%: held-out IWELBO
per cell (``--iw-samples`` importance samples). For the sparse prior, the script also lists which
knockouts share targets. Writes ``benchmarks/results/real_transfer.md`` and ``.png``.
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
HELD_OUT = ["IFNGR2", "JAK2", "SMAD4", "CUL3"]
PRIORS = ["none", "gaussian", "spike_and_slab", "relaxed_bernoulli", "laplace", "horseshoe"]
N_LATENT = 10


def split(adata, seed: int = 0):
    """Training and test cells of the seen labels; transfer and test cells of the held-out knockouts."""
    rng = np.random.default_rng(seed)
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    parts = {"train": [], "test_seen": [], "transfer": [], "test_unseen": []}
    for label in np.unique(labels):
        cells = rng.permutation(np.flatnonzero(labels == label))
        if label in HELD_OUT:
            n = len(cells) // 4
            parts["transfer"].append(cells[:n])
            parts["test_unseen"].append(cells[n:])
        else:
            n = len(cells) // 5
            parts["test_seen"].append(cells[:n])
            parts["train"].append(cells[n:])
    return {name: adata[np.sort(np.concatenate(cells))].copy() for name, cells in parts.items()}


def load(path):
    import pyro_svae

    return pyro_svae.datasets.papalexi2021(path, min_guide_fraction=0.8, min_cells=50)


def run(prior: str, path: str, seed: int, iw_samples: int, max_epochs="auto"):
    import torch

    torch.set_num_threads(1)
    import pyro_svae

    parts = split(load(path), seed)
    start = time.perf_counter()
    model = pyro_svae.fit(parts["train"], n_latent=N_LATENT, prior=prior, batch_key="bio_rep", seed=seed,
                          max_epochs=max_epochs, progress=False)
    fit_seconds = time.perf_counter() - start
    transferred = model.transfer(parts["transfer"], seed=seed)
    row = {"prior": prior, "seed": seed, "epochs": len(model.history), "fit_seconds": fit_seconds,
           "iwelbo_seen": model.marginal_log_likelihood(parts["test_seen"], n_samples=iw_samples, seed=seed),
           "iwelbo_unseen": transferred.marginal_log_likelihood(parts["test_unseen"], n_samples=iw_samples, seed=seed)}
    pips = transferred.intervention_targets() if prior != "none" else None
    return row, pips


def shared_targets(pips: pd.DataFrame, threshold: float = 0.5) -> list:
    """For each latent, the knockouts that target it (PIP > threshold), most shared first."""
    groups = [(k, sorted(pips.index[pips[k] > threshold])) for k in pips.columns]
    return sorted([g for g in groups if g[1]], key=lambda g: -len(g[1]))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--priors", nargs="+", default=PRIORS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--iw-samples", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--max-epochs", default="auto", help="fit epochs (a number for a quick smoke run)")
    args = parser.parse_args()
    if not Path(args.data).is_file():
        raise SystemExit(f"{args.data} not found: this benchmark needs the Papalexi 2021 file (see shared/data/README.md).")
    max_epochs = args.max_epochs if args.max_epochs == "auto" else int(args.max_epochs)
    jobs = [(p, args.data, s, args.iw_samples, max_epochs) for s in args.seeds for p in args.priors]
    with ProcessPoolExecutor(args.jobs) as pool:
        results = list(pool.map(run, *zip(*jobs)))
    table = pd.DataFrame([row for row, _ in results])
    summary = table.groupby("prior", sort=False)[["iwelbo_seen", "iwelbo_unseen", "fit_seconds"]].mean()
    pd.set_option("display.width", 200)
    print(table.round(3).to_string(index=False))
    parts = split(load(args.data), args.seeds[0])
    sizes = {name: part.n_obs for name, part in parts.items()}
    lines = ["# Transfer to held-out knockouts: Papalexi 2021 (ECCITE-seq)", "",
             "`python benchmarks/real_transfer.py" + ("" if args.seeds == [0] else " --seeds " + " ".join(map(str, args.seeds)))
             + "` — `datasets.papalexi2021(min_guide_fraction=0.8, min_cells=50)`, "
             f"held out {HELD_OUT}; cells {sizes}.",
             f"`fit(n_latent={N_LATENT}, batch_key=\"bio_rep\")` defaults, then `transfer` on 25% of the held-out "
             f"knockouts' cells; IWELBO per cell with {args.iw_samples} importance samples on test cells "
             "(higher is better). One CPU thread per fit.", "",
             "| prior | IWELBO seen (test cells) | IWELBO held-out knockouts (after transfer) | fit seconds |",
             "|---|---|---|---|"]
    for prior, row in summary.iterrows():
        lines.append(f"| {prior} | {row['iwelbo_seen']:.2f} | {row['iwelbo_unseen']:.2f} | {row['fit_seconds']:.0f} |")
    sparse = [pips for (row, pips) in results if row["prior"] == "spike_and_slab" and row["seed"] == args.seeds[0]]
    if sparse:
        lines += ["", "## Knockouts sharing targets (spike_and_slab, PIP > 0.5, held-out ones after transfer)", ""]
        for k, members in shared_targets(sparse[0]):
            lines.append(f"- latent {k}: {', '.join(members)}")
            print(f"latent {k}: {', '.join(members)}")
    lines += ["", "## Every run", "", "```", table.round(3).to_string(index=False), "```", ""]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "real_transfer.md").write_text("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pyro_svae import pl

    fig, axes = plt.subplots(1, 2 if sparse else 1, figsize=(12 if sparse else 5, 5), squeeze=False)
    axes = axes[0]
    for i, metric in enumerate(["iwelbo_seen", "iwelbo_unseen"]):
        axes[0].scatter(np.arange(len(summary)) + 0.1 * i, summary[metric], label=metric)
    axes[0].set_xticks(range(len(summary)), list(summary.index), rotation=45, ha="right")
    axes[0].set_ylabel("IWELBO per test cell")
    axes[0].legend()
    if sparse:
        pl.targets(sparse[0], ax=axes[1])
        axes[1].set_title("spike_and_slab inclusion probabilities")
    fig.tight_layout()
    fig.savefig(RESULTS / "real_transfer.png", dpi=120)
    print(f"Wrote {RESULTS / 'real_transfer.md'} and .png")


if __name__ == "__main__":
    main()
