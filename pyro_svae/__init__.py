"""pyro_svae: causal representations of single cells from perturbation screens.

Sparse mechanism shift modeling (Lopez et al., CLeaR 2023) as a Pyro model and guide.
"""

from . import datasets, metrics, pl, priors
from .api import fit
from .guide import guide
from .model import model
from .persistence import load
from .result import SVAE, SVAEConfig

__version__ = "0.1.0"

__all__ = ["fit", "load", "SVAE", "SVAEConfig", "model", "guide", "priors", "datasets", "metrics", "pl", "__version__"]
