"""Does the objective keep a fit that starts at the truth? Basin or objective, on the screens below the bar.

    python benchmarks/truth_start.py --screens latents20 mixed_hard paper base fresh7 held_out0 fresh2 fresh1 [--jobs 2]
    python benchmarks/truth_start.py ... --fit-seeds 2 3 [--seed-screens fresh7 held_out0 fresh2]
    python benchmarks/truth_start.py ... --fit-seeds 0 --warm-start-fractions 0.15 0.5 --seed-screens fresh7 held_out0
    python benchmarks/truth_start.py ... --fit-seeds 0 --warm-start-priors laplace --seed-screens fresh7 held_out0 base

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

``--fit-seeds 2 3 ...``: the defaults again on the seed-0 screen with other fit seeds (runs in
``truth_start_seeds_runs.jsonl``), beside fit seeds 0 and 1 of ``recovery_grid_budget_runs.jsonl``: do
restarts (``fit(n_restarts=...)`` keeps the highest ELBO) reach the truth's basin where it has the
higher ELBO? ``--warm-start-fractions`` and ``--warm-start-priors``: those fits with other
``warm_start_fraction`` values (the dense stage before the rotation longer or shorter) or another prior
for the dense stage (``warm_start.WARM_START_PRIOR``), in a table of their own.

Writes ``benchmarks/results/truth_start.md`` and ``.png`` (runs in ``truth_start_runs.jsonl``).
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recovery_grid import RESULTS, fit_defaults, markdown, read_runs, run_and_record, run_screens  # noqa: E402

import pyro_svae  # noqa: E402
from pyro_svae import warm_start  # noqa: E402

PRETRAIN_STEPS = 3000
DEFAULT_FRACTION = inspect.signature(pyro_svae.fit).parameters["warm_start_fraction"].default
DEFAULT_PRIOR = warm_start.WARM_START_PRIOR[0]  # the dense stage's prior


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


def seed_row(screen: str, fit_seed: int, warm_start_fraction: float = DEFAULT_FRACTION,
             warm_start_prior: str = DEFAULT_PRIOR) -> dict:
    """``fit``'s defaults on ``screen`` (seed 0) with fit seed ``fit_seed`` (and ``warm_start_fraction``, and
    ``warm_start_prior`` for the dense stage: ``warm_start.WARM_START_PRIOR``), one thread: :func:`scores`."""
    warm_start.WARM_START_PRIOR = (warm_start_prior, {})  # this worker process only
    adata, model, seconds = fit_defaults(screen, fit_seed=fit_seed, warm_start_fraction=warm_start_fraction)
    return {"screen": screen, "fit_seed": fit_seed, "warm_start_fraction": warm_start_fraction,
            "warm_start_prior": warm_start_prior, **scores(model, adata),
            "seconds": seconds}


def with_warm_start(seeds: pd.DataFrame) -> pd.DataFrame:
    """``seeds`` with ``warm_start_fraction`` and ``warm_start_prior`` columns (the defaults where a run has none),
    and ``default``: whether the run used both defaults."""
    out = seeds.copy()
    for column, default in (("warm_start_fraction", DEFAULT_FRACTION), ("warm_start_prior", DEFAULT_PRIOR)):
        values = out[column] if column in out else pd.Series([None] * len(out), out.index, dtype=object)
        out[column] = [default if pd.isna(v) else v for v in values]
    out["default"] = (out["warm_start_fraction"] == DEFAULT_FRACTION) & (out["warm_start_prior"] == DEFAULT_PRIOR)
    return out


def seeds_table(seeds: pd.DataFrame, defaults: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Per screen with extra fit seeds: each seed's MCC / F1 / ELBO (fit seeds 0 and 1 from ``defaults``),
    the fit the highest ELBO picks among them, and the truth-started fit's end."""
    seeds = seeds[with_warm_start(seeds)["default"].to_numpy()]
    base = defaults[(defaults["method"] == "spike_and_slab") & (defaults["screen_seed"] == 0)
                    & defaults["screen"].isin(set(seeds["screen"]))]
    # a fit seed the grid already ran (its row in ``defaults``) counts once
    seeds = seeds[~pd.Series(list(zip(seeds["screen"], seeds["fit_seed"])), index=seeds.index).isin(
        set(zip(base["screen"], base["fit_seed"])))]
    fits = pd.concat([base[["screen", "fit_seed", "mcc", "target_f1", "elbo"]],
                      seeds[["screen", "fit_seed", "mcc", "target_f1", "elbo"]]], ignore_index=True)
    fits = fits.sort_values(["screen", "fit_seed"], kind="stable")
    truth = truth.set_index("screen")
    rows = []
    for screen, group in fits.groupby("screen", sort=False):
        picked = group.loc[group["elbo"].idxmax()]
        rows.append({"screen": screen, "fit_seeds": " ".join(str(int(f)) for f in group["fit_seed"]),
                     "mcc per seed": " ".join(f"{v:.3f}" for v in group["mcc"]),
                     "f1 per seed": " ".join(f"{v:.3f}" for v in group["target_f1"]),
                     "elbo per seed": " ".join(f"{v:.2f}" for v in group["elbo"]),
                     "picked seed": int(picked["fit_seed"]), "mcc picked": picked["mcc"], "f1 picked": picked["target_f1"],
                     "elbo picked": picked["elbo"], "elbo from the truth": truth["elbo_end"].get(screen, np.nan),
                     "f1 from the truth": truth["target_f1_end"].get(screen, np.nan)})
    return pd.DataFrame(rows, columns=["screen"] + (list(rows[0])[1:] if rows else [])).set_index("screen")


def fraction_table(seeds: pd.DataFrame) -> pd.DataFrame:
    """Per screen and warm start other than the default (``warm_start_fraction``, the dense stage's prior): MCC,
    F1 and ELBO of each fit seed's fit."""
    seeds = with_warm_start(seeds)
    other = seeds[~seeds["default"]]
    return other.set_index(["screen", "warm_start_prior", "warm_start_fraction", "fit_seed"])[
        ["mcc", "target_f1", "elbo", "seconds"]].sort_index()


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
    parser.add_argument("--fit-seeds", type=int, nargs="*", default=[],
                        help="also fit the defaults with these fit seeds on the --seed-screens")
    parser.add_argument("--seed-screens", nargs="+", default=["fresh7", "held_out0", "fresh2"])
    parser.add_argument("--warm-start-fractions", type=float, nargs="+", default=[DEFAULT_FRACTION],
                        help="fit the --fit-seeds with each of these warm_start_fraction values")
    parser.add_argument("--warm-start-priors", nargs="+", default=[DEFAULT_PRIOR],
                        help="and with each of these priors for the dense stage (names in priors.PRIORS)")
    args = parser.parse_args(argv)
    seeds_path = RESULTS / "truth_start_seeds_runs.jsonl"
    if args.fit_seeds:
        ran = with_warm_start(read_runs(seeds_path)) if seeds_path.exists() else pd.DataFrame()
        done = set(zip(ran["screen"], ran["fit_seed"], ran["warm_start_fraction"], ran["warm_start_prior"])) if len(ran) else set()
        jobs = [(s, f, w, p) for s in args.seed_screens for p in args.warm_start_priors
                for w in args.warm_start_fractions for f in args.fit_seeds]
        run_and_record(seed_row, [job for job in jobs if job not in done],
                       seeds_path, args.jobs, lambda row: f"{row['screen']:>18} fit seed {row['fit_seed']} "
                                                          f"(warm start {row['warm_start_prior']}, {row['warm_start_fraction']}): MCC "
                                                          f"{row['mcc']:.3f}, F1 {row['target_f1']:.3f}, ELBO {row['elbo']:.2f}")
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
    if seeds_path.exists():
        seeds = read_runs(seeds_path)
        text += "\n".join(["", "## More fit seeds: do restarts reach the truth's basin?", "",
                           "Fit seeds 0 and 1 from `recovery_grid_budget_runs.jsonl`, the others from "
                           "`truth_start_seeds_runs.jsonl`; `picked`: the fit with the highest ELBO (what "
                           "`fit(n_restarts=...)` keeps).", "",
                           markdown(seeds_table(seeds, read_runs(RESULTS / "recovery_grid_budget_runs.jsonl"),
                                                read_runs(path))), ""])  # fit seeds in increasing order
        fractions = fraction_table(seeds)
        if len(fractions):
            text += "\n".join(["", f"### Other warm starts (the defaults: `warm_start_fraction` {DEFAULT_FRACTION}, "
                                   f"dense stage `{DEFAULT_PRIOR}`)", "",
                               markdown(fractions), ""])
    figure(result, RESULTS / "truth_start.png")
    (RESULTS / "truth_start.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
