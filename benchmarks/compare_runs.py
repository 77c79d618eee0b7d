"""Two runs files of ``recovery_grid.py`` compared on the fits they share: a change's before and after.

    python benchmarks/compare_runs.py BEFORE_runs.jsonl AFTER_runs.jsonl --name refit_before_after

Only the fits present in both files (same screen, screen seed, fit seed and method) are compared,
so a partial re-run is compared on what it re-ran. Per part of the grid (development, held out):
``recovery_grid.summarise`` of each side, and per screen the change in MCC, F1 and realised FDP at
fdr 0.1 (mean over the screen's seeds, as the grid's report). Writes ``<name>.md`` to
``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from recovery_grid import RESULTS, by_part, markdown, per_screen, read_runs, summarise

KEY = ["screen", "screen_seed", "fit_seed", "method"]


def shared_fits(before: pd.DataFrame, after: pd.DataFrame):
    """The rows of ``before`` and ``after`` whose fit (``KEY``) is in both."""
    common = before[KEY].merge(after[KEY]).drop_duplicates()
    pick = (lambda runs: runs.merge(common, on=KEY))  # noqa: E731
    return pick(before), pick(after)


def compare(before: pd.DataFrame, after: pd.DataFrame) -> list:
    """Markdown lines: the two sides' summaries per part of the grid and the per-screen changes."""
    before, after = shared_fits(before, after)
    lines = [f"{len(after)} fits in both files.", ""]
    for part, rows in by_part(after):
        screens = sorted(rows["screen"].unique())
        sides = {label: summarise(runs[runs["screen"].isin(screens)]) for label, runs in (("before", before), ("after", after))}
        table = pd.concat(sides, names=["side"]).reorder_levels([1, 0]).sort_index()
        lines += [f"## {part} screens ({len(screens)})", "", markdown(table), ""]
    metrics = ["mcc", "target_f1", "fdp_0.1"]
    change = per_screen(before, metrics).join(per_screen(after, metrics), lsuffix=" before", rsuffix=" after")
    for metric in metrics:
        change[f"{metric} change"] = change[f"{metric} after"] - change[f"{metric} before"]
    lines += ["## Per screen (mean over the screen seeds)", "", markdown(change.sort_index(axis=1)), ""]
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--name", required=True)
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args(argv)
    before, after = read_runs(Path(args.before)), read_runs(Path(args.after))
    command = "python benchmarks/compare_runs.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [f"# {args.name}: `{args.before}` against `{args.after}`", "", f"`{command}`", ""]
    lines += compare(before, after)
    path = Path(args.results) / f"{args.name}.md"
    path.write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"Wrote {path}")


if __name__ == "__main__":
    main()
