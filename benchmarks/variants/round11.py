"""Round 11: does the sparse prior from the first step, instead of the dense stage, keep the chart straighter?

``benchmarks/dense_fold.py`` found that the fold forms in the first epoch of the dense stage, is the
same for every fit seed, and straightens only slowly over the rest; nothing in the dense stage's
settings changes it. The dense stage's prior (Gaussian shifts) is indifferent to a fold, while the
sparse prior charges a perturbation on a folded side for its second target. ``nowarm`` is ``fit`` with
``warm_start=None``: the sparse prior from the first step, no dense stage and no rotation. Run beside the
default rows, seed 0, on three screens below the bar and base::

    python benchmarks/recovery_grid.py --name round11 --variants benchmarks/variants/round11.py \\
        --take benchmarks/results/recovery_grid_budget_runs.jsonl \\
        --methods nowarm --seeds 0 --screens fresh7 held_out0 fresh2 base

Stopped there: every screen loses 0.29-0.39 MCC (fresh7 0.864 -> 0.575, held_out0 0.781 -> 0.486, fresh2
0.858 -> 0.472, base 0.963 -> 0.597) and most of its targets (F1 0.20-0.44), while the ELBO per cell stays
within 0.9 nats of the defaults' (held_out0's 0.37 higher). The warm start stays (docs/benchmarks.md).
"""

VARIANTS = {
    "nowarm": {"warm_start": None},
}
