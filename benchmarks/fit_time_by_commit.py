"""Is a fit slower at one commit than at another? The same fixed fit timed at each, alternating.

    python benchmarks/fit_time_by_commit.py 1c95789 HEAD --repeats 2

Each commit is checked out into a temporary git worktree; each repetition runs one fresh process per
commit, in turn (so a slow spell of the machine hits both sides), one torch thread: ``fit`` on grid
screen ``--screen`` (screen seed 0) for ``--epochs`` epochs, no early stopping, no warm start.
Prints, and writes ``benchmarks/results/fit_time_by_commit.md``, every time and the per-commit
median, with the time ``fit``'s last step (``prior_refit``) took where the commit has it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import torch
torch.set_num_threads(1)
import pyro_svae
from pyro_svae.datasets.grid import grid_screens, simulate_grid_screen
refit = {"seconds": float("nan")}
try:
    import pyro_svae.api as api
    original = api.refit_prior
    def timed(*args, **kwargs):
        start = time.perf_counter()
        result = original(*args, **kwargs)
        refit["seconds"] = time.perf_counter() - start
        return result
    api.refit_prior = timed
except AttributeError:
    pass
name, epochs = sys.argv[2], int(sys.argv[3])
adata = simulate_grid_screen(name, seed=0)
start = time.perf_counter()
pyro_svae.fit(adata, n_latent=grid_screens("all")[name]["n_latent"], max_epochs=epochs, early_stopping=False,
              warm_start=None, progress=False, seed=0)
print(json.dumps({"seconds": time.perf_counter() - start, "refit_seconds": refit["seconds"]}))
"""


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("commits", nargs="+")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--screen", default="held_out0")
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args(argv)

    times = {commit: [] for commit in args.commits}
    with tempfile.TemporaryDirectory() as tmp:
        trees = {}
        for commit in args.commits:
            trees[commit] = Path(tmp) / commit.replace("/", "_")
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(trees[commit]), commit],
                           check=True, capture_output=True)
        try:
            for repeat in range(args.repeats):
                for commit in args.commits:
                    out = subprocess.run([sys.executable, "-c", CHILD, str(trees[commit]), args.screen, str(args.epochs)],
                                         check=True, capture_output=True, text=True).stdout
                    row = json.loads(out.strip().splitlines()[-1])
                    times[commit].append(row)
                    print(f"{commit:>12} repeat {repeat}: {row['seconds']:.1f} s (refit {row['refit_seconds']:.1f} s)", flush=True)
        finally:
            for tree in trees.values():
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)
    command = "python benchmarks/fit_time_by_commit.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = ["# Fit time by commit", "", f"`{command}`", "",
             f"`fit` on grid screen `{args.screen}` for {args.epochs} epochs (no early stopping, no warm start), one "
             "torch thread, a fresh process per fit, the commits in turn.", "",
             "| commit | seconds per fit | median | refit seconds |", "|---|---|---|---|"]
    for commit, rows in times.items():
        seconds = [r["seconds"] for r in rows]
        refits = ", ".join(f"{r['refit_seconds']:.1f}" for r in rows)
        lines.append(f"| {commit} | {', '.join(f'{s:.1f}' for s in seconds)} | {statistics.median(seconds):.1f} | {refits} |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "fit_time_by_commit.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
