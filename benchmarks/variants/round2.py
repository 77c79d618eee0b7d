VARIANTS = {
    "rot05": {"warm_start": "rotate"},
    "rot10": {"warm_start": "rotate", "prior_options": {"min_shift": 1.0}},
    "rot_beta": {"warm_start": "rotate", "prior": "beta_spike_and_slab"},
}
