"""Recovery of latents and targets across a grid of simulated screens (``pyro_svae.datasets.grid``).

    python benchmarks/recovery_grid.py --part dev                       # the screens defaults are chosen on
    python benchmarks/recovery_grid.py --part held_out                  # the screens kept aside
    python benchmarks/recovery_grid.py --part fresh                     # drawn later, seen by no choice
    python benchmarks/recovery_grid.py --part all --methods spike_and_slab none gaussian sketch
    python benchmarks/recovery_grid.py --screens base shift2 --methods ceiling --name ceiling
    python benchmarks/recovery_grid.py --part all --report-only --take benchmarks/results/NAME_runs.jsonl
                                        # NAME's methods (a re-run after a change) replace this page's

Every screen is simulated with seeds 0 and 1 and fitted with the same seed (``fit(adata, n_latent=K)``,
defaults otherwise); for the seed agreement, the seed-0 screen is fitted once more with seed 1 by the
methods in ``--stability`` (the Jaccard index of the two fits' target calls, in true-latent
coordinates). Per fit: latent MCC, target precision / recall / F1 at PIP > 0.5, and the realised
false discovery proportion and recall of ``target_calls(fdr)`` at 0.05 and 0.1 (and of the plain
Bayesian FDR rule, ``min_pip=0``), and the PIPs in true-latent coordinates for their calibration.
Runs recorded before ``target_calls`` had ``min_pip`` are rescored exactly from their stored calls
with ``--rescore``.

Methods: ``spike_and_slab`` (``fit``'s defaults); ``none`` (a plain VAE) and ``gaussian`` (dense
shifts, iVAE-like) as they are, from a random start (no warm start); ``sketch``, a plain-PyTorch
recipe reported in the issue tracker (straight-through Bernoulli masks under a Bernoulli(0.12)
prior, 30x weight on the mask KL, masks initialised on, 500 epochs, no warm start); ``ceiling``,
``fit``'s defaults given the true targets (masks fixed to the truth, only the shifts learned, from a
random start: a warm start would permute the latents away from the masks' order); and
``supervised``, the package's encoder trained by regression on the true latents from the counts alone
(no bound: fits exceed it on some screens; ``oracle_ceiling.py`` computes the bound). ``--variants FILE``
adds methods from a Python file defining ``VARIANTS = {name: fit keyword arguments}``.

Finished fits are appended to ``benchmarks/results/<name>_runs.jsonl`` and skipped when run again,
so an interrupted grid resumes. The report (``<name>.md`` and ``<name>.png``) is written from all
runs in that file.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
from pyro import poutine

from pyro_svae.priors import plates
from pyro_svae.warm_start import rotation_closeness, was_rerotated

RESULTS = Path(__file__).resolve().parent / "results"
FDRS = (0.05, 0.1)


def sketch_recipe(n_perturbations, n_latent, *, prior_inclusion: float = 0.12, kl_scale: float = 30.0,
                  slab_scale: float = 5.0):
    """The plain-PyTorch sketch's prior: sampled straight-through masks, mask KL weighted 30x."""
    with plates(n_perturbations, n_latent):
        with poutine.scale(scale=kl_scale):
            mask = pyro.sample("mask", dist.Bernoulli(prior_inclusion))  # [P, K]
        shift = pyro.sample("shift", dist.Normal(0.0, slab_scale))  # [P, K]
    return mask * shift


def true_targets_prior(n_perturbations, n_latent, *, targets, slab_scale: float = 5.0):
    """The ceiling: masks fixed to the true targets ``[P, K]``, only the shifts learned."""
    import torch

    with plates(n_perturbations, n_latent):
        shift = pyro.sample("shift", dist.Normal(0.0, slab_scale))  # [P, K]
    return torch.as_tensor(targets, dtype=shift.dtype) * shift


BUILT_IN = {
    "spike_and_slab": {},
    # the baselines as they are: a plain VAE and dense (iVAE-like) shifts, from a random start
    "none": {"prior": "none", "warm_start": None},
    "gaussian": {"prior": "gaussian", "warm_start": None},
    # 500 epochs as the sketch ran, capped at 15,000 steps (the paper screen's 40,000 cells)
    "sketch": lambda adata: {"prior": sketch_recipe, "warm_start": None,
                             "max_epochs": int(min(500, 15000 // np.ceil(0.9 * adata.n_obs / 256)))},
}
VARIANTS: dict = {}


def _method_options(method: str, adata) -> dict:
    if method == "ceiling":  # masks fixed in the true latents' order: no warm start to rotate or permute them
        return {"prior": true_targets_prior, "prior_options": {"targets": adata.uns["true_targets"].tolist()},
                "warm_start": None}
    options = {**BUILT_IN, **VARIANTS}[method]
    return options(adata) if callable(options) else dict(options)


def supervised_ceiling(adata, seed: int = 0, steps: int = 6000) -> float:
    """MCC of the package's encoder trained on the true latents (MSE, 90% of the cells, scored on
    the rest). An estimate that ignores the label and is limited by its own training, so no bound on
    a fit's MCC; :func:`pyro_svae.datasets.true_posterior` gives the bound."""
    import torch

    from pyro_svae import metrics
    from pyro_svae.nets import Encoder

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x = torch.as_tensor(np.asarray(adata.X), dtype=torch.float32)
    z = torch.as_tensor(adata.obsm["z_true"], dtype=torch.float32)
    order = rng.permutation(len(x))
    train, test = order[: int(0.9 * len(x))], order[int(0.9 * len(x)):]
    encoder = Encoder(x.shape[1], z.shape[1], 128, 2)
    optimizer = torch.optim.Adam(encoder.parameters(), lr=1e-3)
    for _ in range(steps):
        index = torch.as_tensor(rng.choice(train, 256))
        loss = ((encoder(x[index])[0] - z[index]) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        predicted = encoder(x[test])[0].numpy()
    return metrics.mcc(predicted, z[test].numpy())


def fit_defaults(screen: str, screen_seed: int = 0, fit_seed: int = 0, **options):
    """``screen`` (``screen_seed``) and ``fit``'s defaults on it (its ``n_latent`` and controls, one thread,
    ``options`` passed on): ``(adata, model, seconds)``."""
    import torch

    torch.set_num_threads(1)
    import pyro_svae
    from pyro_svae.datasets import grid_screens, simulate_grid_screen

    spec = grid_screens("all")[screen]
    adata = simulate_grid_screen(screen, seed=screen_seed)
    start = time.perf_counter()
    model = pyro_svae.fit(adata, n_latent=spec["n_latent"], control="control" if spec["n_control"] else None,
                          seed=fit_seed, progress=False, **options)
    return adata, model, time.perf_counter() - start


def linear_readout(learned: np.ndarray, truth: np.ndarray):
    """Per true latent, the correlation an affine least-squares map of all ``learned`` ``[N, K]`` latents
    reaches on ``truth`` ``[N, K_true]`` (in sample: what no linear map, oblique or not, beats), and the map's
    coefficients ``[K + 1, K_true]`` (the last row the intercept): ``(r [K_true], coefficients)``."""
    design = np.c_[learned, np.ones(len(learned))]
    coefficients = np.linalg.lstsq(design, truth, rcond=None)[0]
    residual = truth - design @ coefficients
    return np.sqrt(np.clip(1 - residual.var(0) / truth.var(0), 0, 1)), coefficients


def run(screen: str, screen_seed: int, fit_seed: int, method: str, changes: dict = None) -> dict:
    """One fit of ``method`` on the grid screen ``screen`` (``screen_seed``), scored against its truth.
    ``changes`` overrides some of the screen's :func:`~pyro_svae.datasets.simulate` arguments (the
    simulator's decoder, say; ``None``: the grid's screen)."""
    import torch

    torch.set_num_threads(1)
    if method == "supervised":
        from pyro_svae.datasets import simulate_grid_screen

        start = time.perf_counter()
        mcc = supervised_ceiling(simulate_grid_screen(screen, seed=screen_seed), fit_seed)
        return {"screen": screen, "screen_seed": screen_seed, "fit_seed": fit_seed, "method": method, "mcc": mcc,
                "target_precision": np.nan, "target_recall": np.nan, "target_f1": np.nan, "epochs": 0,
                "seconds": time.perf_counter() - start, **{f"{k}_{f}": np.nan for k in ("fdp", "recall", "calls")
                                                            for f in FDRS}, "aligned_calls": []}
    import pyro_svae
    from pyro_svae import metrics
    from pyro_svae.datasets import grid_screens, simulate
    from pyro_svae.results import call_targets

    spec = {**grid_screens("all")[screen], **(changes or {})}
    adata = simulate(**spec, seed=screen_seed)
    control = "control" if spec["n_control"] else None
    options = _method_options(method, adata)
    start = time.perf_counter()
    model = pyro_svae.fit(adata, n_latent=spec["n_latent"], control=control, seed=fit_seed, progress=False, **options)
    seconds = time.perf_counter() - start
    latent, truth = model.get_latent(adata), adata.obsm["z_true"]
    matching = metrics.match_latents(latent, truth)
    names = list(adata.uns["perturbation_names"])
    true_targets = adata.uns["true_targets"][[names.index(p) for p in model.perturbation_names]]
    pips = model.intervention_targets()
    scores = metrics.target_scores(pips.to_numpy(), true_targets, matching)
    row = {"screen": screen, "screen_seed": screen_seed, "fit_seed": fit_seed, "method": method,
           "mcc": metrics.mcc(latent, truth), **{f"target_{k}": v for k, v in scores.items()},
           # the terms of the MCC, in the true latents' order: which latents a fit recovers worst
           "latent_correlations": matching.correlations[np.argsort(matching.true_index)].round(4).tolist(),
           "epochs": len(model.history), "seconds": seconds,
           # a second sparse stage (warm_start.residual_rotation), and the ELBO restarts would be chosen by
           "rerotated": was_rerotated(model.history),
           "closeness": rotation_closeness(model.history),
           "elbo": float(model.elbo(adata, seed=0))}
    for fdr in FDRS:
        for min_pip, suffix in ((0.5, ""), (0.0, "_min_pip0")):  # the default rule, and the plain Bayesian FDR
            calls = call_targets(pips, fdr, min_pip)  # target_calls on the PIPs scored above
            called = np.zeros(pips.shape, bool)
            called[[model.perturbation_names.index(p) for p in calls["perturbation"]], calls["latent"].to_numpy(int)] = True
            realised = metrics.false_discovery(called, true_targets, matching)
            row.update({f"fdp_{fdr}{suffix}": realised["fdp"], f"recall_{fdr}{suffix}": realised["recall"],
                        f"calls_{fdr}{suffix}": realised["n_called"]})
            if fdr == 0.1 and not suffix:  # what a user gets, for the seed agreement of the FDR calls
                row["aligned_fdr_calls"] = metrics.aligned_calls(called, matching, true_targets.shape[1]).tolist()
    row["aligned_calls"] = metrics.aligned_calls(pips.to_numpy() > 0.5, matching, true_targets.shape[1]).tolist()
    # for the calibration of the PIPs: each PIP in the true latents' coordinates, and the truth there
    row["aligned_pips"] = np.round(metrics.align_to_truth(pips.to_numpy(), matching, true_targets.shape[1]), 4).tolist()
    row["true_targets"] = true_targets.astype(int).tolist()
    return row


def rescore(row: dict) -> dict:
    """A run recorded before ``target_calls`` had ``min_pip`` (its FDR calls are the plain rule's),
    rescored exactly from what it stored: the default calls are the plain ones with PIP > 0.5 (the
    plain rule's set is a prefix by decreasing PIP, so at 0.1 they are ``aligned_fdr_calls`` and
    ``aligned_calls``; at 0.05, the plain set if it is the shorter, else every PIP > 0.5). The
    plain rule's numbers move to ``*_min_pip0``. The truth comes from simulating the screen again,
    and the rescoring checks it against the run's own target precision and recall."""
    from pyro_svae.datasets import simulate_grid_screen

    if "fdp_0.1_min_pip0" in row or not isinstance(row.get("aligned_fdr_calls"), list):
        return row
    adata = simulate_grid_screen(row["screen"], seed=row["screen_seed"])
    names = list(adata.uns["perturbation_names"])
    truth = np.asarray(adata.uns["true_targets"], bool)[[names.index(p) for p in sorted(names)]]
    above, plain_01 = np.asarray(row["aligned_calls"], bool), np.asarray(row["aligned_fdr_calls"], bool)
    padded = np.zeros(above.shape, bool)
    padded[:, :truth.shape[1]] = truth
    tp = int((above & padded).sum())
    recorded = (row["target_precision"], row["target_recall"])
    if not np.allclose((tp / max(1, int(above.sum())), tp / max(1, int(truth.sum()))), recorded, atol=1e-9):
        raise ValueError(f"{row['screen']} seed {row['screen_seed']}/{row['fit_seed']}: the simulated truth does not "
                         f"reproduce the run's target precision and recall {recorded}.")
    row = dict(row)
    for fdr in FDRS:
        for key in ("fdp", "recall", "calls"):
            row[f"{key}_{fdr}_min_pip0"] = row[f"{key}_{fdr}"]
        if fdr == 0.1:
            called = plain_01 & above
        elif row[f"calls_{fdr}"] < above.sum():  # the plain set is all above 0.5: unchanged
            continue
        else:
            called = above
        n_called, hits = int(called.sum()), int((called & padded).sum())
        row.update({f"fdp_{fdr}": (n_called - hits) / n_called if n_called else 0.0,
                    f"recall_{fdr}": hits / max(1, int(truth.sum())), f"calls_{fdr}": n_called})
    row["aligned_fdr_calls"] = (plain_01 & above).tolist()
    row["rescored"] = True
    return row


def _load_variants(path: str) -> None:
    spec = importlib.util.spec_from_file_location("recovery_grid_variants", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    VARIANTS.update(module.VARIANTS)


def _jobs(screens, methods, stability, done, seeds=(0, 1)):
    jobs = []
    for screen in screens:
        for method in methods:
            runs = [(screen, seed, seed, method) for seed in seeds]
            if method in stability:
                runs.append((screen, 0, 1, method))
            jobs += [job for job in runs if job not in done]
    return jobs


def run_and_record(function, jobs, path: Path, n_jobs: int, describe) -> list:
    """``function(*job)`` for each job on ``n_jobs`` processes. Each result (a row, or a list of rows)
    is appended to the runs file ``path`` as soon as it is done and printed by ``describe(row)``;
    a failed job is reported and never loses the others. Returns the new rows."""
    rows = []
    with ProcessPoolExecutor(n_jobs, mp_context=multiprocessing.get_context("fork")) as pool:
        futures = {pool.submit(function, *job): job for job in jobs}
        for future in as_completed(futures):
            try:
                result = future.result()
            except Exception as error:  # one failed fit is reported, never loses the others
                print(f"{' '.join(map(str, futures[future]))}: FAILED {type(error).__name__}: {error}", flush=True)
                continue
            new = result if isinstance(result, list) else [result]
            with path.open("a") as f:
                f.write("".join(json.dumps(row, default=float) + "\n" for row in new))
            for row in new:
                print(describe(row), flush=True)
            rows += new
    return rows


def run_missing(function, jobs, key, path: Path, n_jobs: int, describe) -> list:
    """:func:`run_and_record` of the ``jobs`` the runs file ``path`` lacks: ``key(row)`` is the job a
    recorded row came from."""
    done = {key(row) for _, row in read_runs(path).iterrows()} if path.exists() else set()
    return run_and_record(function, [job for job in jobs if job not in done], path, n_jobs, describe)


def run_screens(function, screens, path: Path, n_jobs: int, describe) -> list:
    """:func:`run_and_record` of ``function(screen)`` for the ``screens`` the runs file ``path`` lacks."""
    return run_missing(function, [(s,) for s in screens], lambda row: (row["screen"],), path, n_jobs, describe)


def read_runs(path: Path) -> pd.DataFrame:
    """The runs file ``path`` (one JSON row per line) as a table; empty when there is none."""
    if not path.exists():
        return pd.DataFrame()
    return pd.DataFrame([json.loads(line) for line in path.read_text().splitlines() if line.strip()])


def take_runs(path: Path, other: Path) -> None:
    """Rewrite the runs file ``path``: the runs of every method that ``other`` (a runs file) has are
    replaced by ``other``'s, the other methods' runs kept as they are."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    taken = [json.loads(line) for line in other.read_text().splitlines() if line.strip()]
    methods = {row["method"] for row in taken}
    kept = [row for row in rows if row["method"] not in methods]
    path.write_text("".join(json.dumps(row, default=float) + "\n" for row in kept + taken))
    print(f"{path.name}: {len(rows) - len(kept)} runs of {', '.join(sorted(methods))} replaced by {len(taken)} from {other}")


def _seed_pairs(runs: pd.DataFrame):
    """``(screen, method, run of fit seed 0, run of fit seed 1)`` for each seed-0 screen fitted with both."""
    for (screen, method), group in runs[runs["screen_seed"] == 0].groupby(["screen", "method"]):
        fits = {r["fit_seed"]: r for _, r in group.iterrows()}
        if 0 in fits and 1 in fits:
            yield screen, method, fits[0], fits[1]


def seed_agreement(runs: pd.DataFrame) -> pd.DataFrame:
    """Per screen and method: Jaccard of the target calls of fit seeds 0 and 1 on the seed-0 screen,
    of the calls at PIP > 0.5 (``jaccard``) and of ``target_calls(fdr=0.1)`` (``jaccard_fdr``; NaN
    for runs that did not record them)."""
    from pyro_svae.metrics import jaccard

    def agreement(a, b):
        a, b = np.asarray(a, bool), np.asarray(b, bool)
        width = max(a.shape[1], b.shape[1])
        pad = (lambda x: np.pad(x, ((0, 0), (0, width - x.shape[1]))))  # noqa: E731
        return jaccard(pad(a), pad(b))

    rows = []
    for screen, method, a, b in _seed_pairs(runs):
        recorded = all(isinstance(r.get("aligned_fdr_calls"), list) for r in (a, b))
        rows.append({"screen": screen, "method": method, "jaccard": agreement(a["aligned_calls"], b["aligned_calls"]),
                     "jaccard_fdr": agreement(a["aligned_fdr_calls"], b["aligned_fdr_calls"]) if recorded else np.nan})
    return pd.DataFrame(rows, columns=["screen", "method", "jaccard", "jaccard_fdr"])


def markdown(table: pd.DataFrame) -> str:
    """A pandas table as a GitHub markdown table (no tabulate needed); column levels joined by ' '."""
    columns = [" ".join(map(str, c)) if isinstance(c, tuple) else str(c) for c in table.columns]
    index_name = " ".join(str(n) for n in table.index.names if n is not None)
    cell = (lambda v: f"{v:.3f}" if isinstance(v, (float, np.floating)) else str(v))  # noqa: E731
    lines = ["| " + " | ".join([index_name] + columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for key, *values in table.itertuples(name=None):  # each value keeps its column's type (an int stays one)
        key = " ".join(map(str, key)) if isinstance(key, tuple) else str(key)
        lines.append("| " + " | ".join([key] + [cell(v) for v in values]) + " |")
    return "\n".join(lines)


GOALS = "MCC >= 0.9 and F1 >= 0.9 on >= 90% of screens, medians >= 0.95, median MCC >= none's + 0.15"
#: The grid's parts as the reports name them, in their order (``pyro_svae.datasets.grid.part_of``).
PARTS = {"dev": "development", "held_out": "held-out", "fresh": "fresh held-out"}


def by_part(table: pd.DataFrame):
    """``(part name, rows)`` of ``table`` (a ``screen`` column) for each grid part it has, in :data:`PARTS`' order."""
    from pyro_svae.datasets.grid import part_of

    parts = table["screen"].map(part_of)
    for part, name in PARTS.items():
        if (parts == part).any():
            yield name, table[parts == part]


def per_screen(runs: pd.DataFrame, columns) -> pd.DataFrame:
    """The grid's fits (fit seed = screen seed) of ``runs``: per (screen, method), the mean of
    ``columns`` over the screen's seeds. Every per-screen figure of the reports is one of these."""
    grid = runs[runs["fit_seed"] == runs["screen_seed"]]
    return grid.groupby(["screen", "method"])[list(columns)].mean()


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Per method: medians, share of screens meeting both bars (screen = mean over its two seeds)."""
    grid = runs[runs["fit_seed"] == runs["screen_seed"]]
    screens = per_screen(runs, ["mcc", "target_f1", "fdp_0.05", "fdp_0.1", "recall_0.05", "recall_0.1", "seconds"])
    screens = screens.reorder_levels(["method", "screen"]).sort_index()
    agreement = seed_agreement(runs).set_index(["method", "screen"])
    rerotated = grid.groupby(["method", "screen"])["rerotated"].max() if "rerotated" in grid else None
    rows = []
    for method, table in screens.groupby(level="method"):
        meets = (table["mcc"] >= 0.9) & (table["target_f1"] >= 0.9)
        rows.append({"method": method, "screens": len(table), "median_mcc": table["mcc"].median(),
                     "median_f1": table["target_f1"].median(), "share_meeting_bars": meets.mean(),
                     "mean_fdp_0.05": table["fdp_0.05"].mean(), "max_fdp_0.05": table["fdp_0.05"].max(),
                     "mean_fdp_0.1": table["fdp_0.1"].mean(), "max_fdp_0.1": table["fdp_0.1"].max(),
                     "median_recall_0.1": table["recall_0.1"].median(),
                     **{f"median_{k}": agreement.loc[method, k].median() if method in agreement.index.get_level_values(0)
                        and agreement.loc[method, k].notna().any() else np.nan for k in ("jaccard", "jaccard_fdr")},
                     "rerotated": np.nan if rerotated is None else float(rerotated.loc[method].astype(float).fillna(0).sum()),
                     "mean_seconds": table["seconds"].mean()})
    return pd.DataFrame(rows).set_index("method")


def restart_choice(runs: pd.DataFrame) -> pd.DataFrame:
    """Two restarts chosen by the ELBO: per screen and method with fit seeds 0 and 1 on the seed-0 screen
    (and their ELBO on all cells recorded), the MCC and F1 of seed 0, of the fit with the higher ELBO,
    and of the better of the two by MCC + F1 (what a perfect criterion would pick)."""
    rows = []
    for screen, method, *pair in _seed_pairs(runs):
        fits = dict(enumerate(pair))
        if not all(np.isfinite(r.get("elbo", np.nan)) for r in pair):
            continue
        chosen = max(fits.values(), key=lambda r: r["elbo"])
        best = max(fits.values(), key=lambda r: r["mcc"] + r["target_f1"])
        rows.append({"screen": screen, "method": method, "mcc_seed0": fits[0]["mcc"], "f1_seed0": fits[0]["target_f1"],
                     "mcc_chosen": chosen["mcc"], "f1_chosen": chosen["target_f1"], "mcc_best": best["mcc"],
                     "f1_best": best["target_f1"], "elbo_gap": abs(fits[0]["elbo"] - fits[1]["elbo"]),
                     "score_gap": abs(fits[0]["mcc"] + fits[0]["target_f1"] - fits[1]["mcc"] - fits[1]["target_f1"]),
                     "picked_best": chosen["fit_seed"] == best["fit_seed"]})
    return pd.DataFrame(rows)


def _restart_lines(runs: pd.DataFrame) -> list:
    choice = restart_choice(runs)
    if choice.empty:
        return []
    lines = ["## Two restarts chosen by the ELBO (seed-0 screens)", "",
             "Fit seeds 0 and 1 of each seed-0 screen; `chosen`: the one with the higher ELBO on all cells "
             "(`SVAE.elbo`), `best`: the better by MCC + F1. Share: screens meeting both bars (MCC and F1 >= 0.9).", "",
             "| part | method | screens | median MCC seed 0 / chosen / best | median F1 seed 0 / chosen / best | "
             "share seed 0 / chosen / best | ELBO picked the better |", "|---|---|---|---|---|---|---|"]
    for part, rows in by_part(choice):
        for method, table in rows.groupby("method"):
            share = [((table[f"mcc_{k}"] >= 0.9) & (table[f"f1_{k}"] >= 0.9)).mean() for k in ("seed0", "chosen", "best")]
            lines.append(f"| {part} | {method} | {len(table)} | "
                         + " / ".join(f"{table[f'mcc_{k}'].median():.3f}" for k in ("seed0", "chosen", "best")) + " | "
                         + " / ".join(f"{table[f'f1_{k}'].median():.3f}" for k in ("seed0", "chosen", "best")) + " | "
                         + " / ".join(f"{v:.2f}" for v in share) + f" | {int(table['picked_best'].sum())} of {len(table)} |")
    clear = choice[choice["score_gap"] > 0.02]
    lines += ["", f"Where the two fits differ by more than 0.02 in MCC + F1 ({len(clear)} screens of {len(choice)}), the "
              f"higher ELBO picked the better fit on {int(clear['picked_best'].sum())}."]
    return lines + [""]


def _rule_lines(runs: pd.DataFrame) -> list:
    """The default FDR calls (PIP > 0.5) against the plain Bayesian FDR rule (``min_pip=0``), same fits."""
    grid = runs[runs["fit_seed"] == runs["screen_seed"]]
    if "fdp_0.1_min_pip0" not in grid or grid["fdp_0.1_min_pip0"].isna().all():
        return []
    grid = grid[grid["fdp_0.1_min_pip0"].notna()]
    lines = ["## FDR calls: PIP > 0.5 (`min_pip=0.5`, the default) against the plain rule (`min_pip=0`)", "",
             "The same fits; per screen the mean over its seeds, then the mean (max) over screens.", "",
             "| part | method | screens | fdr | FDP default | FDP plain | recall default | recall plain | calls default | calls plain |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for part, rows in by_part(grid):
        for method, table in rows.groupby("method"):
            screens = table.groupby("screen").mean(numeric_only=True)
            for fdr in FDRS:
                new, old = screens[f"fdp_{fdr}"], screens[f"fdp_{fdr}_min_pip0"]
                lines.append(f"| {part} | {method} | {len(screens)} | {fdr} | {new.mean():.3f} ({new.max():.3f}) | "
                             f"{old.mean():.3f} ({old.max():.3f}) | {screens[f'recall_{fdr}'].mean():.3f} | "
                             f"{screens[f'recall_{fdr}_min_pip0'].mean():.3f} | {screens[f'calls_{fdr}'].sum():.0f} | "
                             f"{screens[f'calls_{fdr}_min_pip0'].sum():.0f} |")
    return lines + [""]


PIP_BINS = (0.0, 0.02, 0.1, 0.5, 0.9, 0.98, 1.0)


def calibration(runs: pd.DataFrame) -> pd.DataFrame:
    """Per part, method and PIP bin: how many (perturbation, latent) entries, their mean PIP and the
    share that are true targets (in the true latents' coordinates; unmatched latents count as false)."""
    rows = []
    grid = runs[runs["fit_seed"] == runs["screen_seed"]]
    for part, run in ((part, run) for part, table in by_part(grid) for _, run in table.iterrows()):
        if not isinstance(run.get("aligned_pips"), list):
            continue
        pips = np.asarray(run["aligned_pips"])
        truth = np.zeros(pips.shape, bool)
        truth[:, :len(run["true_targets"][0])] = np.asarray(run["true_targets"], bool)
        bins = np.clip(np.digitize(pips, PIP_BINS[1:-1]), 0, len(PIP_BINS) - 2)
        for b in range(len(PIP_BINS) - 1):
            rows.append({"part": part, "method": run["method"],
                         "bin": f"[{PIP_BINS[b]}, {PIP_BINS[b + 1]}{']' if b == len(PIP_BINS) - 2 else ')'}",
                         "n": int((bins == b).sum()), "pip_sum": float(pips[bins == b].sum()),
                         "true": int(truth[bins == b].sum())})
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame(rows).groupby(["part", "method", "bin"], sort=False)[["n", "pip_sum", "true"]].sum()
    return table.assign(mean_pip=table["pip_sum"] / table["n"].clip(lower=1),
                        share_true=table["true"] / table["n"].clip(lower=1)).drop(columns="pip_sum")


def _calibration_lines(runs: pd.DataFrame) -> list:
    table = calibration(runs)
    if table.empty:
        return []
    return ["## Calibration of the inclusion probabilities", "",
            "All (perturbation, latent) entries of the fits, pooled, by PIP: calibrated PIPs have `share_true` "
            "close to `mean_pip`.", "", markdown(table), ""]


def report(runs: pd.DataFrame, results: Path, name: str, command: str) -> None:
    summary = summarise(runs)
    grid = runs[runs["fit_seed"] == runs["screen_seed"]]
    agreement = seed_agreement(runs).set_index(["screen", "method"])
    by_screen = per_screen(runs, ["mcc", "target_f1", "fdp_0.1", "recall_0.1", "seconds"])
    by_screen = by_screen.join(agreement, how="left").unstack("method")
    by_screen = by_screen.drop(columns=[c for c in by_screen.columns if by_screen[c].isna().all()])
    pd.set_option("display.width", 250)
    print(summary.round(3).to_string())
    seeds = "; ".join(f"{method} {', '.join(map(str, sorted(values)))}"
                      for method, values in grid.groupby("method")["screen_seed"].unique().items())
    lines = [f"# Recovery across the grid of simulated screens ({name})", "", f"`{command}` (the latest; every run in "
             f"`{name}_runs.jsonl` is reported, whichever command added it)", "",
             f"Each screen simulated with seed(s) per method: {seeds}; and fitted "
             "with the same seed, `n_latent` the true number,",
             "every other `fit` setting at its default; one CPU thread per fit, two fits at a time. MCC: mean |correlation| of matched",
             "latents; F1 of targets at PIP > 0.5; FDP / recall: realised false discovery proportion and recall of",
             "`target_calls(fdr)`; Jaccard: agreement of the calls (PIP > 0.5; `jaccard_fdr`: of `target_calls(fdr=0.1)`)",
             "of fit seeds 0 and 1 on the seed-0 screen; `rerotated`: screens where `fit` rotated a settled fit again.",
             f"Goals: {GOALS}.", ""]
    if "rescored" in runs and runs["rescored"].eq(True).any():
        lines += [f"{int(runs['rescored'].eq(True).sum())} runs were recorded before `target_calls` "
                  "had `min_pip`; their FDR calls were rescored exactly from the calls they stored (`--rescore`).", ""]
    if agreement.empty:
        lines += ["No method was fitted twice on a screen here (`--stability`), so the seed agreement is not",
                  "measured on this page.", ""]
    for part, part_runs in by_part(runs):
        lines += [f"## Summary: {part} screens ({part_runs['screen'].nunique()})", "", markdown(summarise(part_runs)), ""]
    lines += _rule_lines(runs) + _calibration_lines(runs) + _restart_lines(runs)
    lines += ["## Per screen (mean over the screen seeds)", "", markdown(by_screen), ""]
    (results / f"{name}.md").write_text("\n".join(lines))
    has_calls = grid.groupby(["screen", "method"])["calls_0.1"].max().unstack("method") > 0
    _plot(by_screen, has_calls, results / f"{name}.png")
    print(f"Wrote {results / name}.md and .png")


def _plot(table: pd.DataFrame, has_calls: pd.DataFrame, path: Path) -> None:
    """One panel per metric, a row per screen; ``has_calls`` ``[screens x methods]``: a fit with calls at
    fdr 0.1 (the FDP of a method without calls is not drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics_shown = [("mcc", "latent MCC"), ("target_f1", "target F1"), ("fdp_0.1", "realised FDP at fdr 0.1\n(fits with calls)"),
                     ("jaccard", "seed agreement (Jaccard)\nfilled: PIP > 0.5, hollow: FDR 0.1")]
    present = set(table.columns.get_level_values(0))
    metrics_shown = [(m, t) for m, t in metrics_shown if m in present and table[m].notna().any().any()]
    methods = list(table["mcc"].columns)
    screens = list(table.index)
    fig, axes = plt.subplots(1, len(metrics_shown), figsize=(4.2 * len(metrics_shown), 0.22 * len(screens) + 1.6),
                             sharey=True)
    y = np.arange(len(screens))
    for ax, (metric, title) in zip(axes, metrics_shown):
        for i, method in enumerate(methods):
            if (metric, method) in table.columns:
                values = table[(metric, method)]
                if metric == "fdp_0.1":
                    values = values.where(has_calls[method].reindex(values.index, fill_value=False))
                ax.scatter(values, y, s=14, label=method, marker="os^Dv<>"[i % 7], color=f"C{i}")
            if metric == "jaccard" and ("jaccard_fdr", method) in table.columns:  # hollow: the FDR calls
                ax.scatter(table[("jaccard_fdr", method)], y, s=22, marker="os^Dv<>"[i % 7], facecolors="none",
                           edgecolors=f"C{i}", label=f"{method}, target_calls(fdr=0.1)")
        if metric in ("mcc", "target_f1", "jaccard"):
            ax.axvline(0.9, color="0.5", lw=0.8, ls="--")
        if metric == "fdp_0.1":
            ax.axvline(0.15, color="0.5", lw=0.8, ls="--")
        ax.set_title(title, fontsize=10)
        ax.set_xlim(-0.02, 1.02)
        if metric == "jaccard":
            ax.legend(fontsize=7, loc="lower left", title="calls", title_fontsize=7)
    axes[0].set_yticks(y, screens, fontsize=7)
    axes[0].invert_yaxis()
    axes[0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> pd.DataFrame:
    from pyro_svae.datasets import grid_screens

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", default="dev", choices=["dev", "held_out", "fresh", "all"])
    parser.add_argument("--screens", nargs="+", help="screen names (default: every screen of --part)")
    parser.add_argument("--methods", nargs="+", default=["spike_and_slab", "none", "gaussian", "sketch"])
    parser.add_argument("--stability", nargs="*", default=["spike_and_slab"],
                        help="methods also fitted with a second seed on the seed-0 screen")
    parser.add_argument("--variants", help="a Python file defining VARIANTS = {name: fit keyword arguments}")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="screen seeds (each fitted with its own)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--name", default="recovery_grid")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--rescore", action="store_true",
                        help="rescore runs recorded before target_calls had min_pip (exact, from their stored calls)")
    parser.add_argument("--results", default=str(RESULTS), help="folder of the runs file and the report")
    parser.add_argument("--take", metavar="RUNS_FILE",
                        help="replace the runs of the methods in RUNS_FILE (another name's runs, e.g. a re-run of "
                             "spike_and_slab after a change) with RUNS_FILE's, keeping every other method's")
    args = parser.parse_args(argv)
    if args.variants:
        _load_variants(args.variants)
    screens = args.screens or list(grid_screens(args.part))
    results = Path(args.results)
    path = results / f"{args.name}_runs.jsonl"
    results.mkdir(parents=True, exist_ok=True)
    if args.rescore and path.exists():
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        path.write_text("".join(json.dumps(rescore(row), default=float) + "\n" for row in rows))
    if args.take:
        take_runs(path, Path(args.take))
    runs = read_runs(path)
    done = set() if runs.empty else set(map(tuple, runs[["screen", "screen_seed", "fit_seed", "method"]].to_numpy()))
    jobs = [] if args.report_only else _jobs(screens, args.methods, set(args.stability), done, args.seeds)
    # the slowest screens first, so that the two workers finish together
    jobs.sort(key=lambda job: -grid_screens("all")[job[0]]["n_latent"])
    print(f"{len(jobs)} fits to run, {len(done)} already in {path}")
    run_and_record(run, jobs, path, args.jobs, lambda row: (
        f"{row['screen']:>18} seed {row['screen_seed']}/{row['fit_seed']} {row['method']:>16}: MCC {row['mcc']:.3f} "
        f"F1 {row['target_f1']:.3f} FDP(0.1) {row['fdp_0.1']:.2f} {row['seconds']:.0f} s"))
    runs = read_runs(path)
    command = "python benchmarks/recovery_grid.py " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    report(runs, results, args.name, command.strip())
    return runs


if __name__ == "__main__":
    main()
