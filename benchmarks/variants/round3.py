VARIANTS = {
    "auto": {},
    "auto_f50": {"warm_start_fraction": 0.5},
}
