"""Simulated screens and loaders for public CRISPR screens, each returning an AnnData for ``fit``.

- :func:`simulate`: the paper's simulator, with ground truth (Lopez et al. 2023, Sec. 5).
- :func:`papalexi2021`: the ECCITE-seq knockout screen of Papalexi et al. (2021), THP-1 cells.
- :func:`replogle2022`: the K562 Perturb-seq screens of Replogle et al. (2022), from a local file.
- :mod:`~pyro_svae.datasets.grid`: a family of simulated screens (:func:`grid_screens`) to check defaults on.
- :func:`true_posterior` (:mod:`~pyro_svae.datasets.oracle`): a simulated cell's posterior under the
  simulator's own model, whose mean bounds the latent MCC any method can reach on the screen;
  :func:`true_elbo`: its ELBO with the best (mean-field or full) Gaussian of each cell.
- :mod:`~pyro_svae.datasets.preprocess`: the phenotype test and gene selection they use.
"""

from . import grid, oracle, preprocess
from .grid import grid_screens, simulate_grid_screen
from .papalexi import papalexi2021
from .oracle import true_elbo, true_posterior
from .replogle import replogle2022
from .simulation import simulate

__all__ = ["simulate", "papalexi2021", "replogle2022", "preprocess", "grid", "grid_screens", "simulate_grid_screen", "oracle",
           "true_elbo", "true_posterior"]
