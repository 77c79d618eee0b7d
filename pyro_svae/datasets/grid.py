"""A family of simulated screens to develop and check defaults against, never one instance.

Real screens differ in noise, sequencing depth, gene baselines, shift sizes, latent and
perturbation counts, cells per perturbation, controls and how non-linear the genes respond.
:data:`DEV` varies each of these around a typical screen, one factor at a time, plus mixtures and
the paper's own setting; :data:`HELD_OUT` are screens drawn at random from the same ranges
(seeded), kept aside to check choices made on :data:`DEV` on screens they were not made on;
:data:`FRESH` are drawn the same way with another seed, once the held-out screens had been looked
into (a failure on two of them was diagnosed there), so that the fix is checked on screens that no
choice has seen. ``benchmarks/recovery_grid.py`` fits every screen.
"""

from __future__ import annotations

from typing import Dict

import numpy as np

from .simulation import simulate

__all__ = ["BASE", "DEV", "HELD_OUT", "FRESH", "grid_screens", "part_of", "simulate_grid_screen"]

#: The typical screen every :data:`DEV` screen varies: 8 latents, 50 perturbations of 100 cells,
#: 1-2 targets of ~3 SD, NB inverse dispersion 10, library ~2,000, log-normal gene baselines.
BASE = dict(n_latent=8, n_perturbations=50, n_cells_per_perturbation=100, n_control=300, min_targets=1,
            max_targets=2, shift_size=3.0, dispersion=10.0, library_size=2000.0, gene_baseline_sd=1.0,
            decoder_layers=2, n_genes=100)


def _screen(**changes) -> dict:
    return {**BASE, **changes}


#: Screens the defaults are chosen on: one factor at a time, then mixtures, then the paper.
DEV: Dict[str, dict] = {
    "base": _screen(),
    "latents4": _screen(n_latent=4, n_perturbations=24),
    "latents12": _screen(n_latent=12, n_perturbations=60),
    "latents20": _screen(n_latent=20, n_perturbations=100, n_cells_per_perturbation=60),
    "perturbations20": _screen(n_latent=6, n_perturbations=20, n_cells_per_perturbation=150),
    "perturbations200": _screen(n_perturbations=200, n_cells_per_perturbation=40),
    "targets1": _screen(max_targets=1),
    "targets3": _screen(max_targets=3),
    "shift1.5": _screen(shift_size=1.5),
    "shift2": _screen(shift_size=2.0),
    "shift5": _screen(shift_size=5.0),
    "nb3": _screen(dispersion=3.0),
    "nb50": _screen(dispersion=50.0),
    "poisson": _screen(dispersion=None),
    "library500": _screen(library_size=500.0),
    "library10000": _screen(library_size=10000.0),
    "homogeneous_genes": _screen(gene_baseline_sd=0.0),
    "baseline_sd2": _screen(gene_baseline_sd=2.0),
    "cells30": _screen(n_cells_per_perturbation=30, n_control=150),
    "cells300": _screen(n_perturbations=30, n_cells_per_perturbation=300),
    "no_controls": _screen(n_control=0),
    "depth1": _screen(decoder_layers=1),
    "depth3": _screen(decoder_layers=3),
    "mixed_hard": _screen(n_latent=10, n_perturbations=80, n_cells_per_perturbation=60, shift_size=2.0,
                          dispersion=5.0, library_size=1000.0, gene_baseline_sd=1.5, decoder_layers=3),
    "mixed_easy": _screen(n_latent=6, n_perturbations=30, n_cells_per_perturbation=200, shift_size=4.0,
                          dispersion=None, library_size=5000.0, gene_baseline_sd=2.0, n_control=0),
    # the paper's setting (Lopez et al. 2023, Sec. 6.1): 15 latents, 100 perturbations, no controls
    "paper": dict(n_latent=15, n_perturbations=100, n_cells_per_perturbation=500, n_control=0, min_targets=1,
                  max_targets=3, shift_size=5.0, dispersion=10.0, library_size=2000.0, gene_baseline_sd=0.0,
                  decoder_layers=3, n_genes=100),
}


def _draw_held_out(n: int = 8, seed: int = 2026, prefix: str = "held_out") -> Dict[str, dict]:
    """``n`` screens drawn from the ranges :data:`DEV` spans (at least 3 perturbations per latent)."""
    rng = np.random.default_rng(seed)
    screens = {}
    for i in range(n):
        n_latent = int(rng.integers(4, 21))
        n_perturbations = int(rng.integers(max(20, 3 * n_latent), 201))
        cells = int(np.exp(rng.uniform(np.log(30), np.log(300))))
        cells = min(cells, max(30, 15000 // n_perturbations))  # keeps a fit near two minutes
        noise = [3.0, 5.0, 10.0, 20.0, 50.0, None][int(rng.integers(6))]
        screens[f"{prefix}{i}"] = dict(
            n_latent=n_latent, n_perturbations=n_perturbations, n_cells_per_perturbation=cells,
            n_control=int(3 * cells) if rng.random() < 0.75 else 0, min_targets=1,
            max_targets=int(rng.integers(1, 4)), shift_size=float(np.round(rng.uniform(1.5, 5.0), 2)),
            dispersion=noise, library_size=float(np.round(np.exp(rng.uniform(np.log(500), np.log(10000))), -1)),
            gene_baseline_sd=float(np.round(rng.uniform(0.0, 2.0), 2)), decoder_layers=int(rng.integers(1, 4)),
            n_genes=100)
    return screens


#: Screens kept aside: drawn at random from the same ranges, looked at only once the defaults are set.
HELD_OUT: Dict[str, dict] = _draw_held_out()


#: A second held-out part, drawn (another seed) after :data:`HELD_OUT` had been used to diagnose a
#: failure: the fix is checked here, on screens that no choice has seen.
FRESH: Dict[str, dict] = _draw_held_out(seed=2027, prefix="fresh")

#: The grid's parts, in order.
_PARTS = {"dev": DEV, "held_out": HELD_OUT, "fresh": FRESH}


def grid_screens(part: str = "dev") -> Dict[str, dict]:
    """The screens of ``part`` (``"dev"``, ``"held_out"``, ``"fresh"`` or ``"all"``): name ->
    :func:`simulate` arguments."""
    parts = {**_PARTS, "all": {name: spec for screens in _PARTS.values() for name, spec in screens.items()}}
    if part not in parts:
        raise ValueError(f"Expected part to be one of {sorted(parts)}, but got {part!r}.")
    return dict(parts[part])


def part_of(name: str) -> str:
    """The part (``"dev"``, ``"held_out"`` or ``"fresh"``) the grid screen ``name`` belongs to."""
    for part, screens in _PARTS.items():
        if name in screens:
            return part
    raise KeyError(f"{name!r} is not a grid screen; expected one of {sorted(grid_screens('all'))}.")


def simulate_grid_screen(name: str, seed: int = 0):
    """Simulate the grid screen ``name`` with ``seed`` (an AnnData, as :func:`simulate`)."""
    screens = grid_screens("all")
    if name not in screens:
        raise KeyError(f"{name!r} is not a grid screen; expected one of {sorted(screens)}.")
    return simulate(**screens[name], seed=seed)
