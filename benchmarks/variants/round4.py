"""Round 4: the floor of ``min_shift="auto"`` (``pyro_svae.priors.MIN_SHIFT``), 0.5 against 0.25.

The floor binds only where a quarter of the typical shift is under 0.5: on the grid, 10 of the
102 default fits, all on four screens (mixed_hard, shift1.5, shift2 and held_out0; not the seed-1
screens of shift2 and held_out0). Every other fit resolves to the same number under both floors,
so its committed row stands (the two seed-1 fits, re-run, reproduced theirs digit for digit). On
those 10 fits ``min_shift=0.5`` given as a number is the old default (shift2: 0.5 against
0.4997); on the two seed-1 screens it fixes 0.5 where both defaults take a quarter of the
typical shift. Run, on the code whose floor is 0.25::

    python benchmarks/recovery_grid.py --name min_shift_floor --variants benchmarks/variants/round4.py \\
        --methods floor_0.5 spike_and_slab --stability floor_0.5 spike_and_slab --seeds 0 1 \\
        --screens mixed_hard shift1.5 shift2 held_out0
"""

VARIANTS = {
    "floor_0.5": {"prior_options": {"min_shift": 0.5}},
}
