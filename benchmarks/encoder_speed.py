"""The cost of a training step with each encoder family of ``fit(encoder=...)``, side by side.

    python benchmarks/encoder_speed.py [--threads 1] [--latents 10 20]

``fit``'s step (fused objective, multi-tensor ClippedAdam) on :mod:`speed`'s ~10,000 x 500 screen,
batch 256, networks 128 x 2, for each of :data:`pyro_svae.nets.ENCODERS` at each number of latents;
median seconds per step over repeats of 100 steps, the encoders interleaved (:func:`speed.time_steps`),
and each as a ratio to ``"counts"`` (the default) measured in the same run. Writes
``benchmarks/results/encoder_speed.md`` and ``.png``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

import speed
from recovery_grid import RESULTS, markdown


def step_times(adata, n_latent: int, n_steps: int, repeats: int) -> dict:
    """Median seconds per step of ``fit``'s step with each encoder: ``{encoder: seconds}``."""
    from pyro_svae.nets import ENCODERS
    from pyro_svae.runtime import param_scope

    steppers = {}
    for encoder in ENCODERS:
        state: dict = {}
        with param_scope(state):
            steppers[encoder] = (speed.pyro_svae_stepper(adata, "fused", encoder, n_latent), state)
    return speed.time_steps(steppers, n_steps, repeats)


def table(rows: list) -> pd.DataFrame:
    """Rows ``{threads, latents, encoder, seconds}`` -> one row per (threads, latents) with each encoder's
    milliseconds per step and its ratio to ``counts``."""
    frame = pd.DataFrame(rows).pivot_table(index=["threads", "latents"], columns="encoder", values="seconds")
    out = pd.DataFrame(index=frame.index)
    for encoder in sorted(frame.columns, key=lambda name: name != "counts"):  # the default first
        out[f"{encoder} ms"] = (1000 * frame[encoder]).round(2)
        if encoder != "counts":
            out[f"{encoder} / counts"] = (frame[encoder] / frame["counts"]).round(2)
    return out


def figure(result: pd.DataFrame, path: Path) -> None:
    """Milliseconds per step of each encoder, grouped by (threads, latents)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [c for c in result.columns if c.endswith(" ms")]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    width = 0.8 / len(columns)
    x = np.arange(len(result))
    for i, column in enumerate(columns):
        ax.bar(x + i * width, result[column], width, label=column[:-3])
    ax.set_xticks(x + width * (len(columns) - 1) / 2, [f"{t} thread(s), {k} latents" for t, k in result.index])
    ax.set_ylabel("ms per step")
    ax.set_ylim(0, 1.3 * result[columns].to_numpy().max())
    ax.legend(title="encoder", fontsize=8, ncol=len(columns), loc="upper center")
    ax.set_title("fit's step by encoder family (median, interleaved)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--latents", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    adata = speed.screen()
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for n_latent in args.latents:
            for encoder, seconds in step_times(adata, n_latent, args.steps, args.repeats).items():
                rows.append({"threads": threads, "latents": n_latent, "encoder": encoder, "seconds": seconds})
    result = table(rows)
    command = "python benchmarks/encoder_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = "\n".join(["# Seconds per training step by encoder family", "", f"`{command.strip()}`", "",
                      (__doc__ or "").split("\n\n", 2)[2].strip(), "", "![ms per step](encoder_speed.png)", "",
                      markdown(result), ""])
    figure(result, RESULTS / "encoder_speed.png")
    (RESULTS / "encoder_speed.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
