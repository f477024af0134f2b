"""mimzoo: masked image modeling checkpoints, methods and evaluation on one ViT backbone."""
from .hub import list_models
from .loading import load

__version__ = "0.1.0"
__all__ = ["load", "list_models", "__version__"]
