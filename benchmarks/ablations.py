"""The development rounds that chose ``fit``'s defaults, side by side (development screens, seed 0).

    python benchmarks/ablations.py            # the report, from benchmarks/results/ablations_runs.jsonl

Each round ran ``benchmarks/recovery_grid.py --part dev --seeds 0 --stability`` with
``--variants benchmarks/variants/roundN.py`` (v0: ``--methods spike_and_slab sketch``; the ceiling:
``--methods ceiling --screens ...``) on the code of the commit named below; its runs were
then copied into one file with the method renamed (``ROUNDS``). ``a5c7bb2+`` is that commit with
the l4 rotation that ``3eee468`` replaced. Rerunning a round needs that
commit (``git checkout``); the report itself only reads the runs. Writes
``benchmarks/results/ablations.md`` and ``.png``.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from recovery_grid import RESULTS, _plot, markdown, per_screen, summarise

# method in the runs file: (round, what it is, the code it ran on, the variant as run)
ROUNDS = {
    "0.1 defaults": ("v0", "Beta(1, 50) inclusion prior, min_shift 0.5, no warm start: the defaults of release 0.1",
                     "94f465c", "spike_and_slab"),
    "sketch": ("v0", "the issue's plain-PyTorch recipe through fit (straight-through masks, Bernoulli(0.12), "
               "30x mask KL, 500 epochs)", "94f465c", "sketch"),
    "no warm start": ("r1", "data-scaled inclusion prior (min_shift 0.5), random start", "a5c7bb2+", "ss"),
    "l4 rotation": ("r1", "the same prior after a dense warm start rotated by l4 maximisation", "a5c7bb2+", "ss_rot"),
    "l4 rotation, min_shift 1": ("r1", "the same, min_shift 1.0", "a5c7bb2+", "ss_rot_1"),
    "l1 rotation": ("r2", "dense warm start rotated by smoothed-l1 minimisation (10 starts), min_shift 0.5",
                    "3eee468", "rot05"),
    "l1 rotation, min_shift 1": ("r2", "the same, min_shift 1.0", "3eee468", "rot10"),
    "l1 rotation, Beta prior": ("r2", "the same rotation, the 0.1 prior (beta_spike_and_slab)", "3eee468", "rot_beta"),
    "defaults": ("r3", "l1 rotation, min_shift 'auto' (max(0.5, a quarter of the typical shift)): fit's defaults",
                 "18d165a", "auto"),
    "ceiling": ("ceiling", "masks fixed to the true targets, only the shifts learned", "18d165a", "ceiling"),
}


def main() -> pd.DataFrame:
    runs = pd.DataFrame([json.loads(line) for line in (RESULTS / "ablations_runs.jsonl").read_text().splitlines()
                         if line.strip()])
    summary = summarise(runs)
    summary = summary.loc[[m for m in ROUNDS if m in summary.index]]
    # the screens every round ran (the later rounds stopped a variant once it was clearly behind)
    screens = runs[runs["method"] != "ceiling"].groupby("method")["screen"].agg(set)
    common = sorted(set.intersection(*screens))
    common_summary = summarise(runs[runs["screen"].isin(common) & (runs["method"] != "ceiling")])
    common_summary = common_summary.loc[[m for m in ROUNDS if m in common_summary.index]]
    pd.set_option("display.width", 250)
    print(summary.round(3).to_string())
    by_screen = per_screen(runs, ["mcc", "target_f1", "fdp_0.1"]).unstack("method")
    shown = [m for m in ("0.1 defaults", "no warm start", "l4 rotation", "l1 rotation", "l1 rotation, min_shift 1",
                         "l1 rotation, Beta prior", "defaults") if m in runs["method"].unique()]
    rounds = pd.DataFrame([{"method": m, "round": r, "what": what, "commit": commit, "variant": variant}
                           for m, (r, what, commit, variant) in ROUNDS.items()]).set_index("method")
    lines = ["# Ablations: the rounds that chose the defaults", "", "`python benchmarks/ablations.py`", "",
             "The development screens of the grid (`pyro_svae.datasets.grid`, screen seed 0, fit seed 0, "
             "`n_latent` the true number), one CPU thread per fit; metrics as on the "
             "[recovery page](recovery_grid.md). A method absent from a screen's row was not run there "
             "(the ceiling ran on three screens; some variants were stopped early, see the screen counts).", "",
             "## The variants", "", markdown(rounds), "", "## Summary on the screens every round ran", "",
             f"{len(common)} screens: {', '.join(common)}.", "", markdown(common_summary), "",
             "## Summary on the screens each ran", "",
             "The ceiling ran on the three hardest screens (latents20, mixed_hard, paper) only.", "",
             markdown(summary), "",
             "## Per screen: latent MCC", "", markdown(by_screen["mcc"][[m for m in shown if m in by_screen["mcc"]]]),
             "", "## Per screen: target F1", "",
             markdown(by_screen["target_f1"][[m for m in shown if m in by_screen["target_f1"]]]), ""]
    (RESULTS / "ablations.md").write_text("\n".join(lines))
    plotted = by_screen.loc[:, by_screen.columns.get_level_values(1).isin(shown)]
    _plot(plotted.reindex(columns=[(metric, m) for metric in ("mcc", "target_f1", "fdp_0.1") for m in shown
                                   if (metric, m) in plotted.columns]), RESULTS / "ablations.png")
    print(f"Wrote {RESULTS / 'ablations.md'} and .png")
    return summary


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
