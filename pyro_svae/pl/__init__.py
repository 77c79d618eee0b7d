"""Plots. Each takes data (or a fitted model's tables) and an optional ``ax``, returns the ``Axes``,
and never runs inference beyond reading the fitted model.

- :func:`training`, :func:`target_trace`: convergence.
- :func:`targets`, :func:`shifts`: which latents each perturbation acts on, and how.
- :func:`gene_programs`: what each latent does in gene space.
- :func:`ppc`, :func:`latent`: checks of the fit.
"""

from .checks import latent, ppc
from .genes import gene_programs
from .targets import shifts, targets
from .training import target_trace, training

__all__ = ["training", "target_trace", "targets", "shifts", "gene_programs", "ppc", "latent"]
