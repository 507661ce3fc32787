"""HTTP inference service for the mcnet dropout MLP: deterministic and Monte Carlo dropout predictions.

``create_app`` is imported lazily so that ``python -m service`` can reject bad settings
before paying for torch and FastAPI imports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .settings import Settings

if TYPE_CHECKING:
    from .app import create_app

__all__ = ["Settings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module 'service' has no attribute {name!r}")
