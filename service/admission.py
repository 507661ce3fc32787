"""The one error admission control raises: 503 ``overloaded``, refused before any work (see ``service.mcbatch``).

Monte Carlo requests are admitted by :class:`~service.mcbatch.MCScheduler`: a request whose work would take the
admitted, not yet computed work past ``MCSERVE_MAX_QUEUED_WORK`` is refused at once, and one that has not started
within ``MCSERVE_QUEUE_TIMEOUT_S`` is refused then. Both answer 503 ``overloaded`` with ``Retry-After`` (gRPC:
UNAVAILABLE) and count in ``mcserve_shed_requests_total{endpoint,reason,protocol}``. ``/predict``, validation
errors, health and metrics never queue there.
"""

from __future__ import annotations

from .errors import ServiceError


class Overloaded(ServiceError):
    """503 ``overloaded``: the request was refused before any work, and may be retried."""

    def __init__(self, message: str) -> None:
        super().__init__(503, "overloaded", message, None)
