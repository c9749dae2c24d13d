"""Model inference: async clients for the hosted imaging models, with retries, concurrency limits
and a circuit breaker, and the task runners that prepare images, call a model and build the
result objects. The emulator that serves the same contract is :mod:`listener.emulator`.
The contract is described in docs/models.md; the typed answers live in
:mod:`converters.model_outputs`.
"""

from listener.infer.clients import (
    CxrReportGenClient,
    MedImageInsightClient,
    MedImageParse3DClient,
    MedImageParseClient,
    ModelClients,
    build_clients,
)
from listener.infer.resilience import CallBackoff, CircuitBreaker
from listener.infer.transport import ModelTransport

__all__ = [
    "CallBackoff",
    "CircuitBreaker",
    "CxrReportGenClient",
    "MedImageInsightClient",
    "MedImageParse3DClient",
    "MedImageParseClient",
    "ModelClients",
    "ModelTransport",
    "build_clients",
]
