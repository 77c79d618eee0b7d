"""Round 5: the training budget of ``max_epochs="auto"`` (``pyro_svae.train.TARGET_STEPS``), 14,000 against 28,000 steps.

Most grid fits run to ``max_epochs`` with the validation ELBO still improving, and the largest
screens (fresh2, fresh7: 15,000 cells, 259 epochs) reach a better MCC at 600 epochs. ``steps28k``
is ``max_epochs="auto"`` with twice the steps and twice the cap (2,000 epochs); every other setting
is the default. Run on every part of the grid, seed 0, beside the default rows of the time
(``benchmarks/results/budget.md``)::

    python benchmarks/recovery_grid.py --name budget --variants benchmarks/variants/round5.py \\
        --take benchmarks/results/recovery_grid_origin_runs.jsonl \\
        --methods steps28k --stability --seeds 0 --part {dev,held_out,fresh}

28,000 became the default; ``steps28k`` now gives the default's ``max_epochs``.
"""

from pyro_svae.train import steps_per_epoch


def _steps28k(adata):
    n_train = adata.n_obs - int(round(0.1 * adata.n_obs))  # the default validation split, as train.split_cells
    return {"max_epochs": int(min(2000, max(50, round(28000 / steps_per_epoch(n_train, 256)))))}


VARIANTS = {
    "steps28k": _steps28k,
}
