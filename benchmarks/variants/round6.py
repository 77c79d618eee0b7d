"""Round 6: the networks' depth, two hidden layers (the default) against three.

The screens below the MCC bar are mostly those whose simulated decoder has three layers (5 of 7;
2 of the 35 above it), and the bound (``oracle_ceiling.md``) shows the counts carry the latents
there: the fit loses them. ``layers3`` is ``fit``'s defaults with ``n_layers=3`` (encoder and
decoder), every other setting as it is. Run beside the default rows, seed 0, on the three screens
with the most latents (the grid runs them first)::

    python benchmarks/recovery_grid.py --name depth --variants benchmarks/variants/round6.py \\
        --take benchmarks/results/recovery_grid_budget_runs.jsonl \\
        --methods layers3 --stability --seeds 0 --screens latents20 held_out4 held_out0

Stopped there: each of the three was worse in MCC (by 0.07-0.15), target F1 and training ELBO
(docs/benchmarks.md), so the default stays at two layers.
"""

VARIANTS = {
    "layers3": {"n_layers": 3},
}
