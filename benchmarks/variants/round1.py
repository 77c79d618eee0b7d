"""Round-1 variants on the refactored code (development only)."""
VARIANTS = {
    "ss_rot": {"warm_start": "rotate"},
    "ss": {},
    "ss_rot_1": {"warm_start": "rotate", "prior_options": {"min_shift": 1.0}},
    "beta_rot": {"warm_start": "rotate", "prior": "beta_spike_and_slab"},
}
