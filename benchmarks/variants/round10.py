"""Round 10: does a smoother decoder unfold the latents? An L2 penalty on the networks' parameters.

What stays mixed below the bar is a fold (``residual_mixing.py``): the two sides of a true latent go
along different fitted directions, and the shifted perturbations' cells, several SDs from the controls,
leave the space between them unconstrained, so a decoder free to bend there can fold the chart at no
cost to the likelihood. A linear view of the counts folds more (``fold_pca``), so a linear start would
begin more folded; the fit's networks straighten part of it. ``fit(weight_decay=w)`` adds ``w * p`` to
the clipped gradient of every entry of the encoder's and decoder's weight matrices (not the biases,
which hold the genes' baselines): a ``Normal(0, 1 / sqrt(w))`` prior on them where the clip does not
bind. ``wd10`` (s = 0.32) and ``wd100`` (s = 0.1; a default ``Linear(128, 128)`` starts within +-0.09). Run beside the default rows, seed 0, on three screens below
the bar and base::

    python benchmarks/recovery_grid.py --name round10 --variants benchmarks/variants/round10.py \\
        --take benchmarks/results/recovery_grid_budget_runs.jsonl \\
        --methods wd10 wd100 --seeds 0 --screens fresh7 held_out0 fresh2 base

Stopped there: every screen loses, in order of the penalty (MCC at 10: fresh7 0.864 -> 0.806, held_out0
0.781 -> 0.664, fresh2 0.858 -> 0.740, base 0.963 -> 0.940; at 100 all under 0.56) and the ELBO falls
7-17 nats per cell at 10. Defaults unchanged (``weight_decay=0``; docs/benchmarks.md).
"""

VARIANTS = {
    "wd10": {"weight_decay": 10.0},
    "wd100": {"weight_decay": 100.0},
}
