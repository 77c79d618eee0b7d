"""pyro_svae: causal representations of single cells from perturbation screens.

Sparse mechanism shift modeling (Lopez et al., CLeaR 2023) as a Pyro model and guide.
"""

from . import datasets, metrics, pl, priors
from .api import fit, load
from .factory import SVAEConfig
from .guide import guide
from .model import model
from .results import from_uns
from .sites import describe_guide
from .svae import SVAE

__version__ = "0.2.0"

__all__ = ["fit", "load", "SVAE", "SVAEConfig", "model", "guide", "describe_guide", "from_uns", "priors",
           "datasets", "metrics", "pl", "__version__"]
