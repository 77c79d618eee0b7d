"""Does the objective keep a fit that starts at the truth? Basin or objective, on the screens below the bar.

    python benchmarks/truth_start.py --screens latents20 mixed_hard paper base [--jobs 2]

The defaults' fits fall short of the truth's latents on some screens (MCC 0.86 where the posterior
under the true model reaches 0.91-0.93, ``oracle_ceiling.py``). Either the objective's optimum near
the truth is worse than where the fits end (the objective leads away), or it is as good and the fits
never reach it (the warm start picks another basin). Here each screen (seed 0) is fitted from the
truth: the networks are first trained by regression on the true latents (the encoder's mean onto
``z_true``, the decoder and dispersion by the count likelihood of the cells at ``z_true``; 3,000 steps),
the spike-and-slab guide set to the true targets (inclusion 0.99 / 0.01) and shifts; then ``fit``'s
sparse stage runs from there with ``fit``'s own budget, settings and last prior refit (no warm start,
no re-rotation), and the same scores as ``recovery_grid.py`` are taken at the start and at the end,
beside the defaults' seed-0 row of ``recovery_grid_budget_runs.jsonl``.

Writes ``benchmarks/results/truth_start.md`` and ``.png`` (runs in ``truth_start_runs.jsonl``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recovery_grid import RESULTS, markdown, read_runs, run_screens  # noqa: E402

PRETRAIN_STEPS = 3000


def scores(model, adata) -> dict:
    """Latent MCC, target F1 (inclusion > 0.5, latents matched: :func:`pyro_svae.metrics.recovery`) and ELBO
    per cell (one draw, seed 0)."""
    from pyro_svae.metrics import recovery

    result = recovery(model, adata)
    return {"mcc": result["mcc"], "target_f1": result["target_f1"], "elbo": float(model.elbo(adata, seed=0))}


def start_at_truth(model, adata, steps: int = PRETRAIN_STEPS, seed: int = 0) -> None:
    """Train ``model``'s networks by regression on the true latents and set its prior's guide to the true
    targets and shifts (in place)."""
    import torch

    from pyro_svae.guide import encode
    from pyro_svae.likelihoods import count_distribution, dispersion_param
    from pyro_svae.runtime import DataOnDevice

    components = model.components
    nets, screen = components.nets, model._read(adata)
    data = DataOnDevice(screen, model.device)
    z_true = torch.as_tensor(np.asarray(adata.obsm["z_true"]), dtype=torch.float32)
    names = list(adata.uns["perturbation_names"])
    order = [names.index(p) for p in model.perturbation_names]
    targets = torch.as_tensor(adata.uns["true_targets"][order])
    shifts = torch.as_tensor(adata.uns["true_shifts"][order], dtype=torch.float32)
    rng = np.random.default_rng(seed)
    with model.scope() as store:
        dispersion_param(components.likelihood, nets.n_genes, model.device)  # exists in the store
        leaves = [p for name, p in store.named_parameters() if not name.startswith("PriorGuide.")]
        optimizer = torch.optim.Adam(leaves, lr=1e-3)
        for _ in range(steps):
            index = np.sort(rng.choice(screen.n_cells, 256, replace=False))
            batch, z = data.minibatch(index), z_true[index]
            dispersion = dispersion_param(components.likelihood, nets.n_genes, model.device)
            counts = count_distribution(nets.decoder, components.likelihood, z, batch["batch"], batch["library"],
                                        dispersion)
            loss = (encode(nets, batch).mean - z).pow(2).sum(-1).mean() - counts.log_prob(batch["counts"]).sum(-1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        store["PriorGuide.values.pi"] = torch.where(targets, 0.99, 0.01)
        store["PriorGuide.locs.shift"] = torch.where(targets, shifts, torch.zeros_like(shifts))


def truth_start_row(screen: str) -> dict:
    import torch

    import pyro_svae
    from pyro_svae import warm_start as warm
    from pyro_svae.datasets import grid_screens, simulate_grid_screen
    from pyro_svae.prior_refit import refit_prior
    from pyro_svae.priors import resolve_min_shift
    from pyro_svae.train import TrainConfig, auto_max_epochs, split_cells, train

    torch.set_num_threads(1)
    start = time.perf_counter()
    spec = grid_screens("all")[screen]
    adata = simulate_grid_screen(screen, seed=0)
    # fit's own min_shift="auto", from the true typical shift (the median perturbation's largest)
    min_shift = resolve_min_shift("auto", float(np.median(np.abs(adata.uns["true_shifts"]).max(1))))
    model = pyro_svae.fit(adata, n_latent=spec["n_latent"], control="control" if spec["n_control"] else None,
                          warm_start=None, max_epochs=1, early_stopping=False, progress=False, seed=0,
                          prior_options={"min_shift": min_shift})
    start_at_truth(model, adata)
    before = scores(model, adata)
    screen_data = model._read(adata)
    train_cells, _ = split_cells(screen_data.n_cells, 0.1, np.random.default_rng(0))
    max_epochs = auto_max_epochs(len(train_cells), 256)  # fit's budget, less its dense warm start
    config = warm.remaining(TrainConfig(max_epochs=max_epochs, kl_warmup_epochs=max(1, max_epochs // 40),
                                        patience=max(30, max_epochs // 4), seed=0), int(round(0.3 * max_epochs)))
    history = train(screen_data, model.components, config=config, params=model.params, device=model.device,
                    progress=False)
    refit_prior(model.components, model.params, screen_data, model.device, train_cells, seed=0)
    after = scores(model, adata)
    return {"screen": screen, "min_shift": min_shift, **{f"{k}_start": v for k, v in before.items()},
            **{f"{k}_end": v for k, v in after.items()}, "epochs": len(history),
            "seconds": time.perf_counter() - start}


def table(rows: pd.DataFrame, defaults: pd.DataFrame) -> pd.DataFrame:
    """Per screen: the truth-started fit at its start and end beside the defaults' seed-0 fit."""
    base = defaults[(defaults["method"] == "spike_and_slab") & (defaults["screen_seed"] == 0)
                    & (defaults["fit_seed"] == 0)].set_index("screen")
    out = rows.set_index("screen")[["mcc_start", "mcc_end", "target_f1_start", "target_f1_end", "elbo_start",
                                    "elbo_end", "epochs"]].copy()
    out.insert(2, "mcc_defaults", base["mcc"].reindex(out.index))
    out.insert(5, "target_f1_defaults", base["target_f1"].reindex(out.index))
    out["elbo_defaults"] = base["elbo"].reindex(out.index)
    out["elbo_end_minus_defaults"] = out["elbo_end"] - out["elbo_defaults"]
    return out


def figure(result: pd.DataFrame, path: Path) -> None:
    """Per screen: MCC of the truth-started fit at its start and end and of the defaults' fit; the ELBO of
    the truth-started fit's end less the defaults'."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [3, 2]})
    y = np.arange(len(result))
    for column, marker, colour, label in (("mcc_start", "o", "#999999", "from the truth: start"),
                                          ("mcc_end", ">", "#1f77b4", "from the truth: end"),
                                          ("mcc_defaults", "s", "#d62728", "defaults")):
        left.scatter(result[column], y, marker=marker, color=colour, label=label, zorder=3)
    for i, (a, b) in enumerate(zip(result["mcc_start"], result["mcc_end"])):
        left.annotate("", (b, i), (a, i), arrowprops=dict(arrowstyle="->", color="#1f77b4", lw=0.8))
    left.axvline(0.9, color="k", lw=0.8, ls=":")
    left.set_yticks(y, result.index)
    left.set_xlabel("latent MCC")
    left.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    right.barh(y, result["elbo_end_minus_defaults"], color=np.where(result["elbo_end_minus_defaults"] > 0, "#1f77b4", "#d62728"))
    right.axvline(0, color="k", lw=0.8)
    right.set_yticks(y, result.index)
    right.set_xlabel("ELBO per cell: from the truth - defaults (nats)")
    for ax in (left, right):
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--screens", nargs="+", default=["latents20", "mixed_hard", "paper", "base"])
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    path = RESULTS / "truth_start_runs.jsonl"
    run_screens(truth_start_row, args.screens, path, args.jobs,
                lambda row: f"{row['screen']:>18}: MCC {row['mcc_start']:.3f} -> {row['mcc_end']:.3f}, F1 "
                            f"{row['target_f1_start']:.3f} -> {row['target_f1_end']:.3f}, ELBO {row['elbo_start']:.2f} -> "
                            f"{row['elbo_end']:.2f} {row['seconds']:.0f}s")
    result = table(read_runs(path), read_runs(RESULTS / "recovery_grid_budget_runs.jsonl"))
    command = "python benchmarks/truth_start.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = "\n".join(["# A fit started at the truth (truth_start)", "", f"`{command.strip()}`", "",
                      (__doc__ or "").split("\n\n", 2)[2].split("\n\nWrites")[0], "",
                      "![start and end of each fit](truth_start.png)", "", markdown(result), ""])
    figure(result, RESULTS / "truth_start.png")
    (RESULTS / "truth_start.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
