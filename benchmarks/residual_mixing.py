"""What stays mixed below the bar: an oblique map, or a fold no linear map undoes?

    python benchmarks/residual_mixing.py --screens fresh7 held_out0 fresh2 fresh1 latents20 mixed_hard paper base [--jobs 2]

``fit``'s defaults on the seed-0 screen (fit seed 0, one thread per fit), then, on the cell latents
(posterior means) against ``obsm["z_true"]``:

- ``mcc``, ``target_f1``: as ``recovery_grid.py``.
- ``within_corr``: the largest |correlation| between two latents within perturbations (pooled
  covariance of the latents less their perturbation's mean). The model's prior is isotropic within a
  perturbation, so an oblique fit (``z = A z_true`` with ``A`` not orthogonal) shows here.
- ``mcc_whitened``: MCC after whitening by that pooled covariance (the oblique map the prior
  itself would pick); ``mcc_whitened_rotated``: then rotated by the sparsest rotation of its shifts
  (``warm_start.residual_rotation``), as ``fit``'s second stage would; ``mcc_linear``: the mean over
  true latents of the correlation a least-squares map of all fitted latents reaches (in sample: no
  linear map, oblique or not, does better).
- ``fold``: per true latent, the perturbations that move it alone (2 SD or more on it, under 1 SD on
  every other) on each side; ``u+`` and ``u-`` the mean fitted shift of each side (mean latent less
  the controls'; on a screen without controls, less the median perturbation's). A fit linear in that
  latent has ``u-`` opposite ``u+``: ``fold = cos(u+, -u-)`` is 1; a fit that sends the two sides of
  a latent in different directions (a fold of the latent space) has ``fold`` well under 1 and no
  linear map undoes it. The screen's value is the smallest over latents with both sides.
  ``fold_truth``: the same measure on the true latents' own shifts (under 1 where a perturbation also
  moves another latent by up to 1 SD): the baseline a fit's fold is read against.
- ``mcc_pca``, ``fold_pca``: the same for a linear view of the counts that needs no fit
  (:func:`linear_view`): the top ``n_latent`` principal components of the cells' log-normalised
  counts, whitened by their within-perturbation covariance and turned by the sparsest rotation of
  every perturbation's mean (not ``residual_rotation``'s filtered rows). A linear map keeps the two
  sides of a straight latent opposite (fold 1), so what this view leaves folded is the counts' own
  bend, where the simulator's decoder bends: a start from it would begin that folded. No fit is run from it.
- The figure: each latent's fold against its matched correlation, and the two sides' shifts of the
  first screen's two worst-recovered latents in the plane of the worst one (the two fitted latents with
  the largest least-squares weights on it; on fresh7 the second-worst latent's two largest weights are
  on the same two fitted latents).

Writes ``benchmarks/results/residual_mixing.md`` and ``.png`` (runs in ``residual_mixing_runs.jsonl``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recovery_grid import RESULTS, fit_defaults, linear_readout, markdown, read_runs, run_screens  # noqa: E402

ALONE, OTHERS = 2.0, 1.0  # a perturbation moves a latent alone: >= 2 SD on it, < 1 SD on every other


def shifts_from_origin(latent: np.ndarray, labels: np.ndarray, has_controls: bool) -> pd.DataFrame:
    """Mean latent of each perturbation less the controls' (without controls: less the median perturbation's)."""
    means = pd.DataFrame(latent).groupby(labels).mean()
    return means - (means.loc["control"] if has_controls else means.median())


def within_covariance(latent: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Pooled covariance ``[K, K]`` of the latents less their perturbation's mean."""
    centred = latent - pd.DataFrame(latent).groupby(labels).transform("mean").to_numpy()
    return np.cov(centred.T)


def fold_cosines(fitted: pd.DataFrame, true: pd.DataFrame) -> dict:
    """Per true latent with perturbations moving it alone on both sides: ``cos(u+, -u-)``, and ``u+``, ``u-``."""
    out = {}
    others = lambda k: true.drop(columns=k).abs().max(1) < OTHERS  # noqa: E731
    for k in true.columns:
        up = (true[k] >= ALONE) & others(k)
        down = (true[k] <= -ALONE) & others(k)
        if up.any() and down.any():
            u_up, u_down = fitted[up].mean().to_numpy(), fitted[down].mean().to_numpy()
            cosine = float(u_up @ -u_down / (np.linalg.norm(u_up) * np.linalg.norm(u_down) + 1e-12))
            out[int(k)] = (cosine, u_up, u_down)
    return out


def mixing_row(screen: str) -> dict:
    """``fit``'s defaults on ``screen`` (seed 0) and the measures of the module docstring."""
    from pyro_svae import metrics, warm_start
    from pyro_svae.datasets import grid_screens

    spec = grid_screens("all")[screen]
    adata, model, seconds = fit_defaults(screen)
    recovered = metrics.recovery(model, adata)
    screen_data = model._read(adata)
    learned, truth = model.get_latent(adata), np.asarray(adata.obsm["z_true"], float)
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    covariance = within_covariance(learned, labels)
    sd = np.sqrt(np.diag(covariance))
    correlation = covariance / np.outer(sd, sd)
    whitened = learned @ whitening(learned, labels)
    rotation, _ = warm_start.residual_rotation(whitened, screen_data.perturbations, screen_data.n_perturbations, seed=0)
    linear, coefficients = linear_readout(learned, truth)
    matching = metrics.match_latents(learned, truth)
    matched = dict(zip(matching.true_index.tolist(), matching.correlations.tolist()))
    has_controls = bool(spec["n_control"])
    folds = fold_cosines(shifts_from_origin(learned, labels, has_controls), shifts_from_origin(truth, labels, has_controls))
    # the plane of the worst-recovered latent: the two fitted latents with the largest least-squares weights on it
    worst = min(matched, key=matched.get)
    plane = [int(j) for j in np.argsort(-np.abs(coefficients[:-1, worst]))[:2]]
    return {"screen": screen, "mcc": recovered["mcc"], "target_f1": recovered["target_f1"], "seconds": seconds,
            "within_corr": float(np.abs(correlation[~np.eye(len(sd), dtype=bool)]).max()),
            "mcc_whitened": metrics.mcc(whitened, truth), "mcc_whitened_rotated": metrics.mcc(whitened @ rotation, truth),
            "mcc_linear": float(linear.mean()), "fold": min((c for c, _, _ in folds.values()), default=np.nan),
            "latents": [{"latent": k, "correlation": matched[k], "linear_r": float(linear[k]),
                         "fold": folds[k][0] if k in folds else np.nan} for k in sorted(matched)],
            "plane": plane, "plane_sides": {str(k): [u[plane].tolist(), d[plane].tolist()] for k, (_, u, d) in folds.items()
                                            if k in sorted(matched, key=matched.get)[:2]}}


COLUMNS = ["mcc", "target_f1", "within_corr", "mcc_whitened", "mcc_whitened_rotated", "mcc_linear", "fold",
           "fold_truth", "mcc_pca", "fold_pca", "seconds"]


def whitening(latent: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The symmetric ``W`` ``[K, K]`` with ``latent @ W`` of identity pooled within-perturbation covariance."""
    values, vectors = np.linalg.eigh(within_covariance(latent, labels))
    return vectors @ np.diag(values**-0.5) @ vectors.T


def linear_view(counts: np.ndarray, labels: np.ndarray, n_latent: int, has_controls: bool, seed: int = 0) -> np.ndarray:
    """Latents ``[N, n_latent]`` of a linear start: principal components of ``log1p(counts / library x median
    library)`` (``counts`` ``[N, G]``), whitened by their pooled within-perturbation covariance, then rotated
    by the sparsest rotation (:func:`pyro_svae.warm_start.sparsest_rotation`) of the perturbations' shifts
    (:func:`shifts_from_origin`, the controls' own row left out)."""
    from pyro_svae.warm_start import sparsest_rotation

    library = counts.sum(1, keepdims=True)
    logged = np.log1p(counts / np.maximum(library, 1) * np.median(library))
    logged = logged - logged.mean(0)
    _, _, vt = np.linalg.svd(logged, full_matrices=False)
    latent = logged @ vt[:n_latent].T
    latent = latent @ whitening(latent, labels)
    shifts = shifts_from_origin(latent, labels, has_controls)
    shifts = shifts.drop(index="control") if has_controls else shifts
    return latent @ sparsest_rotation(shifts.to_numpy(), seed=seed)


def screen_measures(screen: str) -> dict:
    """What needs ``screen`` (seed 0) but no fit, per true latent: the fold of the true latents' own shifts
    (``fold_truth``) and of :func:`linear_view` (``fold_pca``), and the linear view's MCC (``mcc_pca``)."""
    import scipy.sparse

    from pyro_svae import metrics
    from pyro_svae.datasets import grid_screens, simulate_grid_screen

    spec = grid_screens("all")[screen]
    adata = simulate_grid_screen(screen, seed=0)
    counts = adata.X.toarray() if scipy.sparse.issparse(adata.X) else np.asarray(adata.X, float)
    labels, has_controls = adata.obs["perturbation"].astype(str).to_numpy(), bool(spec["n_control"])
    latent, truth = linear_view(counts, labels, spec["n_latent"], has_controls), np.asarray(adata.obsm["z_true"], float)
    true_shifts = shifts_from_origin(truth, labels, has_controls)
    return {"mcc_pca": metrics.mcc(latent, truth),
            "fold_truth": {k: c for k, (c, _, _) in fold_cosines(true_shifts, true_shifts).items()},
            "fold_pca": {k: c for k, (c, _, _) in fold_cosines(shifts_from_origin(latent, labels, has_controls),
                                                                true_shifts).items()}}


def with_screen_measures(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with :func:`screen_measures`: ``mcc_pca``, and ``fold_truth`` and ``fold_pca`` per screen (the
    smallest) and in each latent's entry."""
    runs = runs.copy()
    measures = {screen: screen_measures(screen) for screen in runs["screen"]}
    runs["mcc_pca"] = [measures[s]["mcc_pca"] for s in runs["screen"]]
    for column in ("fold_truth", "fold_pca"):
        runs[column] = [min(measures[s][column].values(), default=np.nan) for s in runs["screen"]]
        runs["latents"] = [[{**latent, column: measures[s][column].get(latent["latent"], np.nan)} for latent in latents]
                           for s, latents in zip(runs["screen"], runs["latents"])]
    return runs


def table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per screen: the measures of the module docstring."""
    return runs.set_index("screen")[COLUMNS]


def latent_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per true latent of every screen."""
    return pd.DataFrame([{"screen": row["screen"], **latent} for _, row in runs.iterrows() for latent in row["latents"]])


def figure(runs: pd.DataFrame, path: Path) -> None:
    """Left: each true latent's fold against its matched correlation; right: the first screen's two
    worst-recovered latents, each side's mean fitted shift in the plane of the fitted latents carrying them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    latents = latent_table(runs).dropna(subset=["fold"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.5, 4.2))
    for i, (screen, group) in enumerate(latents.groupby("screen", sort=False)):
        left.scatter(group["fold"], group["correlation"], s=18, color=plt.cm.tab10(i % 10), label=screen)
    left.axhline(0.9, color="k", lw=0.8, ls=":")
    left.set_xlabel("fold: cos(u+, -u-) of the latent's two sides")
    left.set_ylabel("matched correlation of the true latent")
    left.legend(fontsize=7, ncol=2)
    left.grid(alpha=0.3)
    first = runs.iloc[0]
    plane = first["plane"]
    for i, (k, (up, down)) in enumerate(first["plane_sides"].items()):
        for side, (x, y), style in (("+", up, "-"), ("-", down, "--")):
            right.annotate("", (x, y), (0, 0), arrowprops=dict(arrowstyle="->", color=plt.cm.Set1(i), lw=1.6, ls=style))
            right.text(x, y, f" true {k}{side}", color=plt.cm.Set1(i), fontsize=9)
    lim = 1.25 * max([1.0] + [abs(v) for pair in first["plane_sides"].values() for side in pair for v in side])
    right.set_xlim(-lim, lim)
    right.set_ylim(-lim, lim)
    right.axhline(0, color="k", lw=0.5)
    right.axvline(0, color="k", lw=0.5)
    right.set_aspect("equal")
    right.set_xlabel(f"fitted latent {plane[0]}")
    right.set_ylabel(f"fitted latent {plane[1]}")
    right.set_title(f"{first['screen']}: mean fitted shift of the perturbations\nmoving one true latent alone, by side",
                    fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--screens", nargs="+", default=["fresh7", "held_out0", "fresh2", "fresh1", "latents20",
                                                         "mixed_hard", "paper", "base"])
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    path = RESULTS / "residual_mixing_runs.jsonl"
    run_screens(mixing_row, args.screens, path, args.jobs,
                lambda row: f"{row['screen']:>12}: MCC {row['mcc']:.3f}, whitened {row['mcc_whitened']:.3f}, "
                            f"linear {row['mcc_linear']:.3f}, fold {row['fold']:.2f} ({row['seconds']:.0f}s)")
    runs = read_runs(path)
    runs = runs.set_index("screen").loc[[s for s in args.screens if s in set(runs["screen"])]].reset_index()
    runs = with_screen_measures(runs)
    command = "python benchmarks/residual_mixing.py " + " ".join(argv if argv is not None else sys.argv[1:])
    figure(runs, RESULTS / "residual_mixing.png")
    text = "\n".join(["# What stays mixed below the bar (residual_mixing)", "", f"`{command.strip()}`", "",
                      (__doc__ or "").split("\n\n", 2)[2].split("\n\nWrites")[0], "",
                      "![fold against recovery](residual_mixing.png)", "", "## Per screen", "", markdown(table(runs)), "",
                      "## Per true latent", "", markdown(latent_table(runs).set_index(["screen", "latent"])), ""])
    (RESULTS / "residual_mixing.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
