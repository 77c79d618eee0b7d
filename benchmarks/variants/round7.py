"""Round 7: the learning rate's decay over each stage of the fit.

The training cells of the largest screens below the MCC bar are 2.7-10.9 nats short of the truth's
log evidence, and twice the steps closes about a nat (``oracle_ceiling.md``): the fit is still far
from the optimum at a constant learning rate, whose minibatch noise sets a floor. ``decay10``
lowers both learning rates exponentially to a tenth of their value by the last planned step of each
stage (``fit(lr_decay=0.1)``); ``lr2_decay20`` starts twice as high (``lr=2e-3``) and ends at
a twentieth. Run beside the default rows, seed 0, on four development screens::

    python benchmarks/recovery_grid.py --name lr_decay --variants benchmarks/variants/round7.py \\
        --take benchmarks/results/recovery_grid_budget_runs.jsonl \\
        --methods decay10 lr2_decay20 --stability --seeds 0 --screens latents20 paper mixed_hard base

Stopped there: ``decay10`` gained 0.2-0.5 nats of ELBO on three of them and lost 0.8 on mixed_hard,
MCC moved by -0.006 to +0.002; ``lr2_decay20`` lost paper's re-rotation (MCC 0.901 -> 0.873). The
default stays a constant rate (docs/benchmarks.md).
"""

VARIANTS = {
    "decay10": {"lr_decay": 0.1},
    "lr2_decay20": {"lr": 2e-3, "lr_decay": 0.05},
}
