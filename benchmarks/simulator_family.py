"""Are the defaults tuned to the simulator's bend? The grid's screens with other simulated decoders.

    python benchmarks/simulator_family.py [--jobs 2] [--report-only]

Every screen of the grid (``pyro_svae.datasets.grid``) is simulated with the same decoder: a
bias-free leaky-ReLU network, which bends each latent at its origin (``dense_fold.py``: the fit
folds there, and more the deeper the network). The defaults were chosen on that grid, so they may
be tuned to that bend. Here a part of the grid is simulated again with other decoders, everything
else (targets, shifts, cell latents, noise settings, seeds) the same, and fitted with the defaults
(``spike_and_slab``) and the plain VAE (``none``), fit seed 0, screen seed 0, side by side in one
run, scored as ``recovery_grid.py`` scores:

- ``leaky_relu``: the grid's own decoder, fitted again with the current code;
- ``leaky_relu + bias``: hidden biases drawn with one standard deviation of each unit's
  pre-activations (``simulate(decoder_bias=1.0)``), so the kinks sit away from the latents' origins;
- ``softplus``: a smooth bend (``decoder_activation="softplus"``);
- ``tanh``: saturation instead of a bend (``decoder_activation="tanh"``), odd, so a latent's two
  sides change the same genes in opposite directions.

The last three scale each hidden unit to unit standard deviation over the screen's cells (so the
nonlinearity acts on the latents' range) and centre each gene's logit (``simulate``'s docstring).
How each decoder bends, from the simulator alone (``nonlinearity``): ``side cosine``, the cosine in
gene space between what the step from the origin to +shift does to the logits and what the step
from -shift to the origin does, averaged over the latents (1: both sides of a latent change the
same genes alike; lower: they change other genes, the bend a fit may chart as a fold); ``nonlinear
share``, the share of the logits' variance that no affine map of the true latents explains.

No choice of the package was made on these decoders: the whole page is held out.

Writes ``benchmarks/results/simulator_family.md`` and ``.png`` (runs in ``simulator_family_runs.jsonl``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recovery_grid import RESULTS, markdown, read_runs, run, run_missing  # noqa: E402

#: Grid screens of the page: one- to three-layer decoders, small to large effects, with and without
#: folding (fresh7) under the grid's own decoder; each fits in about two minutes on one thread.
#: shift2, nb3 and library500 vary base's shifts, noise and depth, and share its decoder.
SCREENS = ["depth1", "depth3", "shift2", "nb3", "library500", "latents4", "fresh0", "fresh7"]
DECODERS = {"leaky_relu": {}, "leaky_relu + bias": {"decoder_bias": 1.0},
            "softplus": {"decoder_activation": "softplus"}, "tanh": {"decoder_activation": "tanh"}}
METHODS = ["spike_and_slab", "none"]
KEPT = ["screen", "decoder", "method", "mcc", "target_f1", "fdp_0.1", "recall_0.1", "calls_0.1", "closeness",
        "rerotated", "epochs", "seconds", "latent_correlations"]


def nonlinearity(adata, shift_size: float = 3.0) -> dict:
    """How the simulated decoder bends: the share of the variance of its logits (over cells and genes)
    that no affine map of the true latents explains (``nonlinear_share``); the share that varies
    with the cells at all (``cell_share``: the rest is a constant per gene); and ``side_cosine``, the
    mean over true latents of the cosine, in gene space, between the change of the logits from the
    origin to ``+shift_size`` on the latent and from ``-shift_size`` to the origin (1: both sides of
    the latent change the same genes the same way, as a straight latent; lower: they change other
    genes, which a fit may chart as two directions, the fold of ``dense_fold.py``)."""
    from pyro_svae.datasets.simulation import decode, decoder_of

    decoder = decoder_of(adata)
    z = np.asarray(adata.obsm["z_true"], float)
    logits = decode(z, **decoder)
    design = np.c_[z, np.ones(len(z))]
    residual = logits - design @ np.linalg.lstsq(design, logits, rcond=None)[0]
    axes = shift_size * np.eye(z.shape[1])
    up, origin, down = decode(axes, **decoder), decode(np.zeros((1, z.shape[1])), **decoder), decode(-axes, **decoder)
    rise, fall = up - origin, origin - down
    cosines = (rise * fall).sum(1) / (np.linalg.norm(rise, axis=1) * np.linalg.norm(fall, axis=1))
    return {"nonlinear_share": float(residual.var() / logits.var()),
            "cell_share": float((logits - logits.mean(0)).var() / logits.var()), "side_cosine": float(cosines.mean())}


def simulated_decoders() -> pd.DataFrame:
    """:func:`nonlinearity` of every screen of the page under every decoder (no fit: from the simulator)."""
    from pyro_svae.datasets import grid_screens, simulate

    rows = []
    for screen in SCREENS:
        spec = grid_screens("all")[screen]
        for decoder, changes in DECODERS.items():
            rows.append({"screen": screen, "decoder": decoder,
                         **nonlinearity(simulate(**{**spec, **changes}, seed=0), spec["shift_size"])})
    return pd.DataFrame(rows)


def family_run(screen: str, decoder: str, method: str) -> dict:
    """``method`` on ``screen`` (seed 0) simulated with the decoder ``decoder`` of :data:`DECODERS`."""
    row = run(screen, 0, 0, method, changes=DECODERS[decoder])
    return {key: row.get(key, np.nan) for key in KEPT if key != "decoder"} | {"decoder": decoder}


def jobs() -> list:
    """``(screen, decoder, method)`` of every fit of the page, the slowest screen first."""
    return [(s, d, m) for s in SCREENS[::-1] for d in DECODERS for m in METHODS]


def meets(table: pd.DataFrame) -> pd.Series:
    """Whether each row meets both bars (MCC and target F1 >= 0.9)."""
    return (table["mcc"] >= 0.9) & (table["target_f1"] >= 0.9)


def with_decoders(runs: pd.DataFrame, decoders: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with each screen's :func:`nonlinearity` under its decoder (``decoders``: :func:`simulated_decoders`)."""
    own = [c for c in runs.columns if c not in ("nonlinear_share", "cell_share", "side_cosine")]
    return runs[own].merge(decoders, on=["screen", "decoder"], how="left")


def summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Per decoder: how it bends (medians of :func:`nonlinearity`), screens meeting both bars, medians
    of MCC and F1, the median gain over ``none``, the realised FDP at fdr 0.1 (median and worst) and
    the median seconds of a fit. ``runs`` :func:`with_decoders`."""
    fits = runs[runs["method"] == "spike_and_slab"].set_index(["decoder", "screen"])
    plain = runs[runs["method"] == "none"].set_index(["decoder", "screen"])["mcc"]
    rows = []
    for decoder in [d for d in DECODERS if d in fits.index.get_level_values(0)]:
        own = fits.loc[decoder]
        gain = (own["mcc"] - plain.loc[decoder].reindex(own.index)).median() if decoder in plain.index else np.nan
        rows.append({"decoder": decoder, "screens": len(own), "median side cosine": own["side_cosine"].median(),
                     "median nonlinear share": own["nonlinear_share"].median(),
                     "meeting both bars": int(meets(own).sum()),
                     "median MCC": own["mcc"].median(), "median F1": own["target_f1"].median(),
                     "median MCC over none": gain, "median FDP at 0.1": own["fdp_0.1"].median(),
                     "worst FDP at 0.1": own["fdp_0.1"].max(), "median seconds": own["seconds"].median()})
    return pd.DataFrame(rows).set_index("decoder")


def per_screen(runs: pd.DataFrame) -> pd.DataFrame:
    """Per screen and decoder: how the decoder bends there, the defaults' MCC, F1 and realised FDP at
    fdr 0.1, and ``none``'s MCC. ``runs`` :func:`with_decoders`."""
    fits = runs[runs["method"] == "spike_and_slab"].set_index(["screen", "decoder"])
    plain = runs[runs["method"] == "none"].set_index(["screen", "decoder"])["mcc"]
    table = fits[["side_cosine", "nonlinear_share", "mcc", "target_f1", "fdp_0.1"]].copy()
    table["none MCC"] = plain.reindex(table.index)
    order = [(s, d) for s in SCREENS for d in DECODERS if (s, d) in table.index]
    return table.loc[order]


def figure(runs: pd.DataFrame, path: Path) -> None:
    """MCC and target F1 of each screen under each decoder (the defaults), ``none``'s MCC hollow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    screens = [s for s in SCREENS if s in set(runs["screen"])]
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.4), sharey=True, gridspec_kw={"width_ratios": [3, 3, 2]})
    width = 0.8 / len(DECODERS)
    for ax, value, title in zip(axes[:2], ["mcc", "target_f1"], ["latent MCC", "target F1 (PIP > 0.5)"]):
        for i, decoder in enumerate(DECODERS):
            x = np.arange(len(screens)) + (i - (len(DECODERS) - 1) / 2) * width
            for method, style in (("spike_and_slab", dict(marker="o")), ("none", dict(marker="o", fillstyle="none"))):
                if value == "target_f1" and method == "none":
                    continue
                rows = runs[(runs["decoder"] == decoder) & (runs["method"] == method)].set_index("screen")
                y = rows[value].reindex(screens).to_numpy(float)
                ax.plot(x, y, linestyle="", color=f"C{i}", label=decoder if method == "spike_and_slab" else None,
                        **style)
        ax.axhline(0.9, color="grey", lw=0.8, ls="--")
        ax.set_xticks(range(len(screens)), screens, rotation=45, ha="right")
        ax.set_title(title)
        ax.set_ylim(0.3, 1.02)
    fits = runs[runs["method"] == "spike_and_slab"]
    for i, decoder in enumerate(DECODERS):
        rows = fits[fits["decoder"] == decoder]
        axes[2].plot(rows["side_cosine"], rows["mcc"], "o", color=f"C{i}", label=decoder)
    axes[2].axhline(0.9, color="grey", lw=0.8, ls="--")
    axes[2].set_xlabel("side cosine of the simulated decoder (1: a straight latent)")
    axes[2].set_title("latent MCC by how the decoder bends")
    axes[0].set_ylabel("score (hollow: prior='none')")
    axes[0].legend(title="simulated decoder", fontsize=8, loc="lower left")
    fig.suptitle("Defaults on the grid's screens simulated with other decoders (screen and fit seed 0)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    path = RESULTS / "simulator_family_runs.jsonl"
    if not args.report_only:
        run_missing(family_run, jobs(), lambda r: (r["screen"], r["decoder"], r["method"]), path, args.jobs,
                    lambda r: f"{r['screen']:>10} {r['decoder']:>18} {r['method']:>14}: MCC {r['mcc']:.3f} "
                              f"F1 {r['target_f1']:.3f} ({r['seconds']:.0f} s)")
    runs = with_decoders(read_runs(path), simulated_decoders())
    figure(runs, RESULTS / "simulator_family.png")
    text = "\n".join([
        "# The defaults on other simulated decoders (simulator_family)", "", "`python benchmarks/simulator_family.py`", "",
        (__doc__ or "").split("\n\n", 2)[2].split("\n\nWrites")[0], "", "![scores by decoder](simulator_family.png)", "",
        "## By decoder (the defaults; bars: MCC >= 0.9 and target F1 >= 0.9)", "", markdown(summary(runs)), "",
        "## Per screen", "", markdown(per_screen(runs)), ""])
    (RESULTS / "simulator_family.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
