"""When does a fit fold? The fold of the cells' latents over ``fit``'s dense stage, across seeds and settings.

    python benchmarks/dense_fold.py [--jobs 2] [--report-only]

``residual_mixing.py`` found what keeps seven grid screens under the bar: a fold (the two sides of a
true latent sent in directions that are not opposite; ``fold = cos(u+, -u-)``, 1 for a straight
latent, see that module). This benchmark asks where the fold comes from, on the seed-0 screens, with
``fit``'s own code path (its dense stage is run by ``fit`` itself, observed after each epoch and
stopped when the stage ends; nothing after it runs):

- ``trajectory``: the fold (smallest and mean over the latents with both sides) after every 10th
  epoch of the dense stage (fit seed 0, defaults). The fold is invariant to rotations and to the
  origin, so the dense stage's latents are measured as they are; ``mcc_rotated`` is the MCC of the
  stage's end after the sparsest rotation (what the sparse stage starts from); the smallest fold and
  the MCC of ``fit``'s finished fit are ``residual_mixing.py``'s (``residual_mixing_runs.jsonl``).
- ``seeds``: the fold after 10 epochs for fit seeds 0-7: is the early chart the seed's, or the screen's?
- ``variants``: the fold and rotated MCC at the end of the dense stage under other settings of
  ``fit``: KL warm-up of 1 and 60 epochs (default: ``max_epochs // 40``), batch sizes 64 and 1,024
  (default 256), 4 latents more than the truth (an overcomplete chart; MCC then matches the best
  latents among more), and the control cells repeated 10 times (a heavier weight on the cells whose
  prior is the origin; measured on the screen's own cells).
- ``shallower``: the same screen with the simulator's decoder one and two hidden layers shallower
  (fresh7 and fresh2 have three; every other setting and the seed the same, so the same targets,
  shifts and cell latents, which ``simulate`` draws before the decoder), fitted with ``fit``'s
  defaults to the end (fit seed 0): MCC, target F1 and the smallest fold of the finished fit, beside
  the screen's own (``residual_mixing_runs.jsonl``). One factor at a time, where the grid's table
  below only sets screens of different depths side by side.
- ``depth``: the committed grid (``recovery_grid_budget_runs.jsonl``, the mean over screen seeds 0
  and 1) by the depth of the simulator's decoder. Its decoder is a bias-free leaky-ReLU network, so
  the two sides of a latent change different genes (the counts' own bend, ``residual_mixing``'s
  ``fold_pca``).

Writes ``benchmarks/results/dense_fold.md`` and ``.png`` (runs in ``dense_fold_runs.jsonl``).
"""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recovery_grid import RESULTS, markdown, per_screen, read_runs, run_missing  # noqa: E402
from residual_mixing import fold_cosines, shifts_from_origin  # noqa: E402

TRAJECTORY_SCREENS = ["fresh7", "held_out0", "fresh2", "fresh1", "latents20", "mixed_hard", "paper", "base"]
VARIANT_SCREENS = ["fresh7", "held_out0", "fresh2", "base"]
VARIANTS = {"defaults": {}, "kl_warmup 1": {"kl_warmup_epochs": 1}, "kl_warmup 60": {"kl_warmup_epochs": 60},
            "batch 64": {"batch_size": 64}, "batch 1024": {"batch_size": 1024}, "latents +4": {"n_latent_extra": 4},
            "controls x10": {"control_copies": 10}}
SEEDS, EARLY_EPOCH, EVERY = range(8), 10, 10
SHALLOWER_SCREENS, SHALLOWER_LAYERS = ["fresh7", "fresh2"], [1, 2]


class _DenseStageOver(Exception):
    pass


def folds(latent: np.ndarray, labels: np.ndarray, true_shifts: pd.DataFrame, has_controls: bool) -> dict:
    """The smallest and the mean fold over the true latents with both sides."""
    values = [c for c, _, _ in fold_cosines(shifts_from_origin(latent, labels, has_controls), true_shifts).values()]
    return {"fold_min": float(min(values)), "fold_mean": float(np.mean(values))}


def with_control_copies(adata, copies: int):
    """``adata`` with its control cells ``copies`` times (new cell names); the data itself is not changed."""
    import anndata

    if copies <= 1:
        return adata
    controls = adata[adata.obs["perturbation"].astype(str) == "control"]
    extra = []
    for i in range(copies - 1):
        part = controls.copy()
        part.obs_names = [f"{name}-copy{i}" for name in controls.obs_names]
        extra.append(part)
    return anndata.concat([adata] + extra, merge="same", uns_merge="first")


@contextmanager
def observed_dense_stage(on_epoch, on_end):
    """Within the block, ``fit``'s dense stage calls ``on_epoch(epoch, components, params, config)`` after
    each epoch and ``on_end(components, params, config, n_dense)`` on its rotated result (``n_dense``: the
    stage's epochs), then ``fit`` stops (``_DenseStageOver``); ``on_epoch`` may raise it to stop earlier.
    ``warm_start`` calls ``train`` for the dense stage only (``fit`` calls it for the sparse stages)."""
    from pyro_svae import warm_start

    train, dense_rotated_start = warm_start.train, warm_start.dense_rotated_start

    def observed_train(data, components, *, config, params, **kwargs):
        return train(data, components, config=config, params=params,
                     on_epoch_end=lambda epoch: on_epoch(epoch, components, params, config), **kwargs)

    def observed_start(components, data, train_config, *args, **kwargs):
        params, _, n_dense, _ = dense_rotated_start(components, data, train_config, *args, **kwargs)
        on_end(components, params, train_config, n_dense)
        raise _DenseStageOver

    warm_start.train, warm_start.dense_rotated_start = observed_train, observed_start
    try:
        yield
    except _DenseStageOver:
        pass
    finally:
        warm_start.train, warm_start.dense_rotated_start = train, dense_rotated_start


def dense_run(part: str, screen: str, variant: str = "defaults", fit_seed: int = 0) -> list:
    """The rows of one observed dense stage (``part``: ``trajectory``, ``seeds`` or ``variants``)."""
    import torch

    torch.set_num_threads(1)
    import pyro_svae
    from pyro_svae import metrics
    from pyro_svae.datasets import grid_screens, simulate_grid_screen
    from pyro_svae.svae import SVAE

    spec, options = grid_screens("all")[screen], dict(VARIANTS[variant])
    extra, copies = options.pop("n_latent_extra", 0), options.pop("control_copies", 1)
    adata = simulate_grid_screen(screen, seed=0)
    truth = np.asarray(adata.obsm["z_true"], float)
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    has_controls = bool(spec["n_control"])
    true_shifts = shifts_from_origin(truth, labels, has_controls)
    base = {"part": part, "screen": screen, "variant": variant, "fit_seed": fit_seed}
    rows = []

    def latent(components, params, config):  # the screen's own cells, as the model at this point encodes them
        model = SVAE(components, params, history=pd.DataFrame(), train_config=config, device=torch.device("cpu"),
                     adata=adata)
        return model.get_latent(adata)

    def on_epoch(epoch, components, params, config):
        if part == "trajectory" and epoch % EVERY == 0:
            rows.append({**base, "epoch": epoch, **folds(latent(components, params, config), labels, true_shifts,
                                                          has_controls)})
        if part == "seeds" and epoch == EARLY_EPOCH - 1:
            rows.append({**base, "epoch": EARLY_EPOCH, **folds(latent(components, params, config), labels,
                                                                true_shifts, has_controls)})
            raise _DenseStageOver

    def on_end(components, params, config, n_dense):
        z = latent(components, params, config)
        rows.append({**base, "epoch": "end", "dense_epochs": n_dense, "max_epochs": config.max_epochs,
                     "mcc_rotated": metrics.mcc(z, truth),
                     **folds(z, labels, true_shifts, has_controls)})

    with observed_dense_stage(on_epoch, on_end):
        pyro_svae.fit(with_control_copies(adata, copies), n_latent=spec["n_latent"] + extra,
                      control="control" if has_controls else None, seed=fit_seed, progress=False, **options)
    return rows


def shallower_run(part: str, screen: str, variant: str, fit_seed: int = 0) -> list:
    """``fit``'s defaults to the end on ``screen`` with its simulator decoder ``variant`` (``"layers 1"``, ...)
    hidden layers deep, every other setting of the screen and its seed (0) the same: the same targets,
    shifts and cell latents (drawn before the decoder), another decoder and other count noise."""
    import torch

    torch.set_num_threads(1)
    import pyro_svae
    from pyro_svae import metrics
    from pyro_svae.datasets import grid_screens, simulate

    spec = {**grid_screens("all")[screen], "decoder_layers": int(variant.split()[1])}
    adata = simulate(**spec, seed=0)
    has_controls = bool(spec["n_control"])
    model = pyro_svae.fit(adata, n_latent=spec["n_latent"], control="control" if has_controls else None,
                          seed=fit_seed, progress=False)
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    true_shifts = shifts_from_origin(np.asarray(adata.obsm["z_true"], float), labels, has_controls)
    recovered = metrics.recovery(model, adata)
    return [{"part": part, "screen": screen, "variant": variant, "fit_seed": fit_seed, "epoch": "fit",
             "mcc": recovered["mcc"], "target_f1": recovered["target_f1"],
             **folds(model.get_latent(adata), labels, true_shifts, has_controls)}]


def run_job(part: str, screen: str, variant: str, fit_seed: int) -> list:
    """One job of :func:`jobs`."""
    return (shallower_run if part == "shallower" else dense_run)(part, screen, variant, fit_seed)


def jobs() -> list:
    """``(part, screen, variant, fit_seed)`` of every observed dense stage of the page."""
    return ([("trajectory", s, "defaults", 0) for s in TRAJECTORY_SCREENS]
            + [("seeds", s, "defaults", seed) for s in ["fresh7", "fresh2", "base"] for seed in SEEDS]
            + [("variants", s, v, 0) for v in VARIANTS if v != "defaults" for s in VARIANT_SCREENS]
            + [("shallower", s, f"layers {n}", 0) for s in SHALLOWER_SCREENS for n in SHALLOWER_LAYERS])


def key(row) -> tuple:
    """The job a run's row came from."""
    return row["part"], row["screen"], row["variant"], row["fit_seed"]


def finished_fits() -> pd.DataFrame:
    """``fit``'s finished fits of the same screens (fit seed 0, defaults), by screen: ``residual_mixing.py``'s
    runs (its last row per screen), or an empty table when there are none."""
    mixing = read_runs(RESULTS / "residual_mixing_runs.jsonl")
    return mixing.drop_duplicates("screen", keep="last").set_index("screen") if len(mixing) else mixing


def trajectory_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per screen: the mean fold after 1 and 11 epochs and at the dense stage's end, beside the finished fit."""
    traj = runs[runs["part"] == "trajectory"]
    by_epoch = traj[traj["epoch"] != "end"].astype({"epoch": int})
    end = traj[traj["epoch"] == "end"].set_index("screen")
    table = pd.DataFrame({
        "fold_mean after 1 epoch": by_epoch[by_epoch["epoch"] == 0].set_index("screen")["fold_mean"],
        "after 11": by_epoch[by_epoch["epoch"] == EVERY].set_index("screen")["fold_mean"],
        "at the end": end["fold_mean"], "fold_min at the end": end["fold_min"],
        "dense epochs": end["dense_epochs"].astype(int), "mcc_rotated": end["mcc_rotated"]})
    fitted = finished_fits()
    if len(fitted):
        table["fold_min of the fit"] = fitted["fold"]
        table["mcc of the fit"] = fitted["mcc"]
    return table.loc[[s for s in TRAJECTORY_SCREENS if s in table.index]]


def seeds_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per screen: the least and most fold after ``EARLY_EPOCH`` epochs over the fit seeds."""
    seeds = runs[runs["part"] == "seeds"]
    return seeds.groupby("screen", sort=False)[["fold_min", "fold_mean"]].agg(["min", "max"]).round(3)


def variants_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per setting (rows) and screen: mean fold and rotated MCC at the dense stage's end."""
    ends = runs[(runs["epoch"] == "end") & runs["screen"].isin(VARIANT_SCREENS)
                & runs["part"].isin(["trajectory", "variants"])]
    table = ends.pivot_table(index="variant", columns="screen", values=["fold_mean", "mcc_rotated"])
    return table.loc[[v for v in VARIANTS if v in table.index], (slice(None), VARIANT_SCREENS)]


def shallower_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per screen and simulator depth: MCC, target F1 and smallest fold of ``fit``'s finished fit."""
    rows = runs[runs["part"] == "shallower"].assign(layers=lambda t: t["variant"].str.split().str[1].astype(int))
    rows = rows[["screen", "layers", "mcc", "target_f1", "fold_min"]]
    own = finished_fits()
    if len(own):  # the screens' own depth (3), fitted the same way
        from pyro_svae.datasets import grid_screens

        own = own.reset_index()
        own = own[own["screen"].isin(rows["screen"])].rename(columns={"fold": "fold_min"})
        own["layers"] = [grid_screens("all")[s]["decoder_layers"] for s in own["screen"]]
        rows = pd.concat([rows, own[["screen", "layers", "mcc", "target_f1", "fold_min"]]])
    return rows.set_index(["screen", "layers"]).sort_index()


def depth_table() -> pd.DataFrame:
    """The committed grid's screens (mean over screen seeds) by the simulator decoder's hidden layers."""
    from pyro_svae.datasets import grid_screens

    grid = read_runs(RESULTS / "recovery_grid_budget_runs.jsonl")
    screens = per_screen(grid, ["mcc", "target_f1"]).xs("spike_and_slab", level="method")
    depth = pd.Series({name: spec["decoder_layers"] for name, spec in grid_screens("all").items()}, name="depth")
    screens = screens.join(depth)
    screens["meets both bars"] = (screens["mcc"] >= 0.9) & (screens["target_f1"] >= 0.9)
    return screens.groupby("depth").agg(screens=("mcc", "size"), meeting=("meets both bars", "sum"),
                                           median_mcc=("mcc", "median"), lowest_mcc=("mcc", "min"))


def figure(runs: pd.DataFrame, path: Path) -> None:
    """Left: the mean fold over the dense stage; right: at its end, by setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    traj = runs[(runs["part"] == "trajectory") & (runs["epoch"] != "end")].astype({"epoch": int})
    for i, screen in enumerate(TRAJECTORY_SCREENS):
        group = traj[traj["screen"] == screen]
        if len(group):
            left.plot(group["epoch"] + 1, group["fold_mean"], color=plt.cm.tab10(i), lw=1.5, label=screen)
    left.set_xscale("log")
    left.set_xlabel("dense-stage epoch")
    left.set_ylabel("fold (mean over latents): cos(u+, -u-)")
    left.set_title("fit's dense stage, fit seed 0", fontsize=9)
    left.legend(fontsize=7, ncol=2)
    left.grid(alpha=0.3)
    table = variants_table(runs)["fold_mean"]
    for i, screen in enumerate(table.columns):
        right.scatter(table[screen].to_numpy(), np.arange(len(table)) + (i - 1.5) * 0.12, s=22,
                      color=plt.cm.tab10(TRAJECTORY_SCREENS.index(screen)), label=screen)
    right.set_yticks(np.arange(len(table)), table.index)
    right.invert_yaxis()
    right.set_xlabel("fold (mean over latents) at the end of the dense stage")
    right.set_title("settings of fit", fontsize=9)
    right.legend(fontsize=7)
    right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    path = RESULTS / "dense_fold_runs.jsonl"
    if not args.report_only:
        run_missing(run_job, jobs(), key, path, args.jobs,
                    lambda r: f"{r['part']:>10} {r['screen']:>10} {r['variant']:>12} seed {r['fit_seed']} "
                              f"epoch {r['epoch']}: fold {r['fold_min']:.2f} / {r['fold_mean']:.2f}")
    runs = read_runs(path)
    figure(runs, RESULTS / "dense_fold.png")
    given = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--report-only"]
    command = "python benchmarks/dense_fold.py " + " ".join(given)  # what wrote the runs
    text = "\n".join([
        "# When does a fit fold? (dense_fold)", "", f"`{command.strip()}`", "",
        (__doc__ or "").split("\n\n", 2)[2].split("\n\nWrites")[0], "", "![fold over the dense stage](dense_fold.png)",
        "", "## Over the dense stage (fit seed 0)", "", markdown(trajectory_table(runs)), "",
        f"## After {EARLY_EPOCH} epochs, fit seeds {SEEDS[0]}-{SEEDS[-1]} (least and most over the seeds)", "",
        markdown(seeds_table(runs)), "", "## At the end of the dense stage, by setting", "",
        markdown(variants_table(runs)), "", "## Shallower simulator decoders, fitted to the end", "",
        markdown(shallower_table(runs)), "", "## The committed grid by the simulator's decoder depth", "",
        markdown(depth_table()), ""])
    (RESULTS / "dense_fold.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
