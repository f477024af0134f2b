"""mimzoo: masked image modeling checkpoints, methods and evaluation on one ViT backbone."""
from .api import list_models, load
from .errors import Error

__version__ = "0.1.0"
__all__ = ["load", "list_models", "Error", "__version__"]
