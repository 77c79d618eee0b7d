"""Below the bar: what the fitted latents carry, against the simulator's decoder gain per latent.

    python benchmarks/decoder_gain.py                          # the screen table only (no fits, ~1 min)
    python benchmarks/decoder_gain.py --fit fresh7 paper ...   # and per-latent results of the defaults

The grid's simulator (``pyro_svae.datasets.simulation``) decodes ``z`` with an injective leaky-ReLU
MLP (slope 0.2) of 1-3 hidden layers. Its gain along a latent, ``|d log mu / d z_k|`` (the norm
over genes of the true log mean's change per unit of ``z_k``, by central differences), differs
between the two sides of the latent: where it is small, cells shifted to that side change the
counts little. Per latent this page reports the gain at ``z_k < -2``, ``|z_k| < 1`` and
``z_k > 2`` (3,000 cells of the screen), and its **flatness**: the weaker side over the centre.

1. Screen table: the smallest flatness of each screen's latents and the mean centre gain, against
   the committed fits of the defaults (``recovery_grid_runs.jsonl``, ``spike_and_slab``, the mean
   over the screen seeds), with Spearman correlations across the 42 screens.
2. ``--fit``: ``fit``'s defaults on the seed-0 screen (fit seed 0, one thread per fit). Per true
   latent: its matched learned latent's |correlation| (the terms of the MCC), the correlation a
   linear map of all learned latents reaches (least squares, in sample: what no rotation, oblique
   or not, can beat), and how much of the true shifts the fit keeps on each side: for the
   perturbations that move the latent by 2 SD or more on that side, the mean of their fitted shift
   (the mean posterior latent of their cells less the controls', on the matched latent, signed)
   over their true shift.

Writes ``benchmarks/results/decoder_gain.md`` and ``decoder_gain.png``; the fits are kept in
``decoder_gain_runs.jsonl`` (a re-run skips the screens already there).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from recovery_grid import RESULTS, fit_defaults, linear_readout, markdown, read_runs, run_screens

EDGE = 2.0  # |z_k| beyond which a cell is on a side of latent k, in prior SDs


def side_gains(adata, n_cells: int = 3000, step: float = 0.25, seed: int = 0) -> pd.DataFrame:
    """Per true latent ``[K]``: the simulator's gain at ``z_k < -2``, ``|z_k| < 1``, ``z_k > 2`` and the flatness."""
    from pyro_svae.datasets.simulation import true_log_mean

    z = np.asarray(adata.obsm["z_true"], float)
    z = z[np.random.default_rng(seed).choice(len(z), min(n_cells, len(z)), replace=False)]
    rows = []
    for k in range(z.shape[1]):
        e = np.zeros(z.shape[1])
        e[k] = step
        gain = np.linalg.norm(true_log_mean(adata, z + e) - true_log_mean(adata, z - e), axis=1) / (2 * step)
        low, centre, high = gain[z[:, k] < -EDGE].mean(), gain[np.abs(z[:, k]) < 1].mean(), gain[z[:, k] > EDGE].mean()
        rows.append({"latent": k, "gain_low": low, "gain_centre": centre, "gain_high": high,
                     "flatness": min(low, high) / centre, "flat_side": "low" if low < high else "high"})
    return pd.DataFrame(rows)


def screen_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Every grid screen (seed 0): its decoder, smallest flatness, mean gain, and the defaults' recovery."""
    from pyro_svae.datasets import grid_screens, simulate_grid_screen
    from pyro_svae.datasets.grid import part_of

    rows = []
    for name, spec in grid_screens("all").items():
        gains = side_gains(simulate_grid_screen(name, seed=0))
        rows.append({"screen": name, "part": part_of(name), "decoder_layers": spec["decoder_layers"],
                     "n_latent": spec["n_latent"], "min_flatness": gains["flatness"].min(),
                     "mean_gain": gains["gain_centre"].mean()})
    table = pd.DataFrame(rows).set_index("screen")
    ours = runs[(runs["method"] == "spike_and_slab") & (runs["fit_seed"] == runs["screen_seed"])]
    return table.join(ours.groupby("screen")[["mcc", "target_f1"]].mean()).sort_values("mcc")


def fit_latents(screen: str) -> list:
    """Per true latent of ``screen`` (seed 0), the defaults' recovery and the kept share of its shifts."""
    from pyro_svae import metrics
    from pyro_svae.datasets import grid_screens

    spec = grid_screens("all")[screen]
    adata, model, _ = fit_defaults(screen)
    learned, truth = model.get_latent(adata), np.asarray(adata.obsm["z_true"], float)
    matching = metrics.match_latents(learned, truth)
    linear, _ = linear_readout(learned, truth)
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    fitted_means = pd.DataFrame(learned).groupby(labels).mean()
    true_means = pd.DataFrame(truth).groupby(labels).mean()
    # shifts from the control cells' mean latent (on a screen without controls, from the median perturbation)
    fitted_shift = fitted_means - (fitted_means.loc["control"] if spec["n_control"] else fitted_means.median())
    true_shift = true_means - (true_means.loc["control"] if spec["n_control"] else true_means.median())
    gains = side_gains(adata)
    rows = []
    for learned_k, true_k, corr in zip(matching.learned_index, matching.true_index, matching.correlations):
        sign = np.sign(np.corrcoef(learned[:, learned_k], truth[:, true_k])[0, 1])
        kept = {}
        for side, moved in (("low", true_shift[true_k] < -EDGE), ("high", true_shift[true_k] > EDGE)):
            kept[side] = float((sign * fitted_shift.loc[moved, learned_k] / true_shift.loc[moved, true_k]).mean()) \
                if moved.any() else np.nan
        g = gains.iloc[int(true_k)]
        rows.append({"screen": screen, "latent": int(true_k), "correlation": float(corr),
                     "linear_r": float(linear[true_k]), "flatness": float(g["flatness"]), "flat_side": g["flat_side"],
                     "gain_centre": float(g["gain_centre"]),
                     "kept_flat_side": kept[g["flat_side"]], "kept_other_side": kept["high" if g["flat_side"] == "low" else "low"]})
    return rows


def _plot(screens: pd.DataFrame, latents: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_panels = 3 if len(latents) else 1
    fig, axes = plt.subplots(1, n_panels, figsize=(5.2 * n_panels, 4.3), squeeze=False)
    ax = axes[0, 0]
    for layers, marker in ((1, "o"), (2, "s"), (3, "^")):
        part = screens[screens["decoder_layers"] == layers]
        ax.scatter(part["min_flatness"], part["mcc"], marker=marker, label=f"{layers} hidden layer(s)", alpha=0.8)
    for name, row in screens[screens["mcc"] < 0.9].iterrows():
        ax.annotate(name, (row["min_flatness"], row["mcc"]), fontsize=7, xytext=(3, -3), textcoords="offset points")
    ax.axhline(0.9, color="grey", lw=0.8, ls="--")
    ax.set(xlabel="smallest flatness of the screen's latents", ylabel="latent MCC of the defaults",
           title="Grid screens (mean over screen seeds)")
    ax.legend(fontsize=8)
    if len(latents):
        for column, x, label in ((1, latents["flatness"], "flatness of the true latent (weaker side / centre gain)"),
                                 (2, latents["kept_least"], "share of the true shift kept on the worse side")):
            ax = axes[0, column]
            for screen in sorted(latents["screen"].unique()):
                rows = latents["screen"] == screen
                ax.scatter(x[rows], latents.loc[rows, "correlation"], label=screen, alpha=0.8, s=18)
            ax.set(xlabel=label, ylabel="|correlation| with its matched learned latent", title="Per latent, fit seed 0")
        axes[0, 2].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(screens: pd.DataFrame, latents: pd.DataFrame, command: str, path: Path) -> str:
    from scipy.stats import spearmanr

    lines = ["# Below the bar: the fitted latents, a linear map of them, and the decoder's gain (decoder_gain)", "", f"`{command}`", "",
             (__doc__ or "").split("\n\n", 2)[2].split("\n\nWrites")[0], "", "## Screens", "",
             "Spearman correlation across the screens with the defaults' latent MCC / target F1:", ""]
    for column in ("min_flatness", "mean_gain", "n_latent", "decoder_layers"):
        lines.append(f"- `{column}`: {spearmanr(screens[column], screens['mcc'])[0]:+.2f} / "
                     f"{spearmanr(screens[column], screens['target_f1'])[0]:+.2f}")
    lines += ["", markdown(screens), ""]
    if len(latents):
        flat = latents.sort_values(["screen", "flatness"])
        worst = latents.loc[latents.groupby("screen")["correlation"].idxmin()]
        rank = [int((latents[(latents["screen"] == r["screen"])]["flatness"] < r["flatness"]).sum()) + 1
                for _, r in worst.iterrows()]
        lines += ["## Per latent (fit seed 0 on the seed-0 screen)", "",
                  f"Pooled over {len(latents)} latents of {latents['screen'].nunique()} screens: Spearman of the "
                  f"matched correlation with the flatness {spearmanr(latents['flatness'], latents['correlation'])[0]:+.2f}, "
                  "with the smaller of the two kept shares "
                  f"{spearmanr(latents['kept_least'], latents['correlation'], nan_policy='omit')[0]:+.2f}; "
                  f"the shift kept on the flat side {latents['kept_flat_side'].median():.2f} and on the other side "
                  f"{latents['kept_other_side'].median():.2f} of the true shift (medians). Each screen's worst-recovered "
                  "latent and its rank by flatness among the screen's latents (1: the flattest):", ""]
        lines += [f"- {r['screen']}: latent {r['latent']}, correlation {r['correlation']:.3f} (linear map "
                  f"{r['linear_r']:.3f}), flatness {r['flatness']:.2f}, rank {k} of "
                  f"{(latents['screen'] == r['screen']).sum()}; shift kept {r['kept_flat_side']:.2f} on the flat side, "
                  f"{r['kept_other_side']:.2f} on the other" for (_, r), k in zip(worst.iterrows(), rank)]
        summary = latents.groupby("screen").agg(mcc=("correlation", "mean"), linear_map=("linear_r", "mean"),
                                                min_flatness=("flatness", "min"), kept_least=("kept_least", "min"),
                                                sides_lost=("kept_least", lambda kept: int((kept < 0.5).sum())))
        lines += ["", "Per screen: the MCC (mean matched correlation), the mean correlation of the best linear "
                  "map of all learned latents (no rotation can do better), the smallest flatness, the smallest "
                  "share of a side's true shifts the fit keeps, and the latents that keep less than half of one "
                  "side's:", "", markdown(summary), "",
                  "All latents:", "", markdown(flat.set_index(["screen", "latent"])), ""]
    lines += ["![decoder gain](decoder_gain.png)", ""]
    path.write_text("\n".join(lines))
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fit", nargs="*", default=[], metavar="SCREEN", help="grid screens to fit (seed 0)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args(argv)
    results = Path(args.results)
    runs_path = results / "decoder_gain_runs.jsonl"
    run_screens(fit_latents, args.fit, runs_path, args.jobs,
                   lambda row: f"{row['screen']:>12} latent {row['latent']:>2}: corr {row['correlation']:.3f} "
                               f"flatness {row['flatness']:.2f}")
    latents = read_runs(runs_path)
    if len(latents):  # the smaller share of a latent's true shifts the fit keeps, of its two sides
        latents = latents.assign(kept_least=latents[["kept_flat_side", "kept_other_side"]].min(1))
    screens = screen_table(read_runs(results / "recovery_grid_runs.jsonl"))
    command = "python benchmarks/decoder_gain.py " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    _plot(screens, latents, results / "decoder_gain.png")
    print(report(screens, latents, command.strip(), results / "decoder_gain.md"))


if __name__ == "__main__":
    main()
