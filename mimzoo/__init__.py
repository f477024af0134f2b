"""mimzoo: masked image modeling checkpoints, methods and evaluation on one ViT backbone."""
import logging as _logging

from .api import list_models, load
from .errors import Error

__version__ = "0.1.0"
__all__ = ["load", "list_models", "Error", "__version__"]

# What a method loaded from which file is one INFO line on the "mimzoo" logger; shown by default (as Lightning
# shows its own) unless the application configured logging itself.
_logger = _logging.getLogger(__name__)
if not _logger.handlers and not _logging.getLogger().handlers:
    _logger.setLevel(_logging.INFO)
    _logger.addHandler(_logging.StreamHandler())
    _logger.propagate = False
