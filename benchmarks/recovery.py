"""Recovery of latents and targets on the package's simulator, per prior and seed.

    python benchmarks/recovery.py [--seeds 0 1 2] [--priors spike_and_slab gaussian none] [--jobs 2]
    python benchmarks/recovery.py --priors spike_and_slab --fit-options '{"kl_warmup_epochs": 165}' --name warmup165

Fits every prior with default settings (or with ``--fit-options``, a JSON dict of ``fit`` keyword
arguments) on the demo screen of each seed and writes ``benchmarks/results/<name>.md`` (a table per
run and the mean and sd per prior) and ``<name>.png``; ``name`` defaults to ``recovery``.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd

RESULTS = Path(__file__).resolve().parent / "results"


def run(prior: str, seed: int, options: dict) -> dict:
    import torch

    torch.set_num_threads(1)
    import pyro_svae
    from pyro_svae.demo import DEMO_SCREEN, recovery

    screen = dict(DEMO_SCREEN, seed=seed)
    adata = pyro_svae.datasets.simulate(**screen)
    start = time.perf_counter()
    model = pyro_svae.fit(adata, n_latent=screen["n_latent"], prior=prior, seed=seed, progress=False, **options)
    seconds = time.perf_counter() - start
    return {"prior": prior, "seed": seed, **recovery(model, adata), "epochs": len(model.history),
            "validation_elbo": model.history["validation_elbo"].iloc[-10:].mean(), "seconds": seconds}


def main() -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--priors", nargs="+", default=["spike_and_slab", "gaussian", "none"])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--fit-options", default="{}", help="JSON dict of extra fit() keyword arguments")
    parser.add_argument("--name", default="recovery", help="base name of the result files")
    args = parser.parse_args()
    options = json.loads(args.fit_options)
    jobs = [(p, s, options) for p in args.priors for s in args.seeds]
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(run, *zip(*jobs)))
    table = pd.DataFrame(rows)
    metrics = ["mcc", "mcc_spearman", "r2", "target_precision", "target_recall", "target_f1"]
    summary = table.groupby("prior", sort=False)[metrics + ["seconds"]].agg(["mean", "std"])
    pd.set_option("display.width", 200)
    print(table.round(3).to_string(index=False))
    print(summary.round(3).to_string())

    from pyro_svae.demo import DEMO_SCREEN

    RESULTS.mkdir(parents=True, exist_ok=True)
    lines = ["# Recovery on the simulator", "",
             f"`python benchmarks/recovery.py{_command_line(args)}` — screen {DEMO_SCREEN} (seed varied),",
             f"`fit` settings: defaults{' and ' + json.dumps(options) if options else ''};",
             "one CPU thread per fit. MCC: mean |correlation| of matched latents; targets called at PIP > 0.5.", "",
             "The optimum a fit reaches depends on the screen and on floating-point summation order (so on",
             "the thread count): on the seed-0 screen, `python -m pyro_svae.demo --threads 2` reaches MCC",
             "0.77 where one thread reaches 0.86. Screens that stop short keep two latents mixed.", "",
             "## Mean (sd) per prior", "", "| prior | " + " | ".join(metrics) + " | seconds |",
             "|---|" + "---|" * (len(metrics) + 1)]
    for prior, row in summary.iterrows():
        cells = [f"{row[(m, 'mean')]:.3f} ({row[(m, 'std')]:.3f})" for m in metrics + ["seconds"]]
        lines.append(f"| {prior} | " + " | ".join(cells) + " |")
    lines += ["", "## Every run", "", table.round(3).to_markdown(index=False) if _has_tabulate() else
              "```\n" + table.round(3).to_string(index=False) + "\n```", ""]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, metric in zip(axes, ["mcc", "target_f1"]):
        for i, prior in enumerate(args.priors):
            values = table.loc[table["prior"] == prior, metric]
            ax.scatter([i] * len(values), values, alpha=0.7)
            ax.hlines(values.mean(), i - 0.25, i + 0.25, color="k")
        ax.set_xticks(range(len(args.priors)), args.priors)
        ax.set_ylabel(metric)
        ax.set_ylim(0, 1.02)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{args.name}.png", dpi=120)
    print(f"Wrote {RESULTS / args.name}.md and .png")
    return table


def _command_line(args) -> str:
    parts = []
    if args.priors != ["spike_and_slab", "gaussian", "none"]:
        parts.append("--priors " + " ".join(args.priors))
    if args.seeds != [0, 1, 2]:
        parts.append("--seeds " + " ".join(map(str, args.seeds)))
    if args.fit_options != "{}":
        parts.append(f"--fit-options '{args.fit_options}'")
    if args.name != "recovery":
        parts.append(f"--name {args.name}")
    return "".join(" " + p for p in parts)


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
