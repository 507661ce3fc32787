"""HTTP inference service for the mcnet dropout MLP: deterministic and Monte Carlo dropout predictions."""

from .app import create_app
from .settings import Settings

__all__ = ["Settings", "create_app"]
