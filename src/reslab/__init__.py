"""reslab: residual networks, their plain twins, and the experiments that show why they work."""

from reslab.blocks import Residual, ResidualMLP
from reslab.errors import ReslabError
from reslab.models import count_macs, count_params, create_model, list_models
from reslab.weights import load_model, load_weights, save_weights

__version__ = "0.1.0"

__all__ = [
    "Residual",
    "ResidualMLP",
    "ReslabError",
    "__version__",
    "count_macs",
    "count_params",
    "create_model",
    "list_models",
    "load_model",
    "load_weights",
    "save_weights",
]
