"""Model inference: async clients for the hosted imaging models, with retries, concurrency limits
and a circuit breaker, and the built-in emulator that serves the same contract (not a clinical
model). The contract is described in docs/models.md; the typed answers live in
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
from listener.infer.emulator import EmulatorStats, create_app
from listener.infer.resilience import Backoff, CircuitBreaker
from listener.infer.server import BackgroundServer, run_emulator, start_emulator
from listener.infer.transport import ModelTransport

__all__ = [
    "BackgroundServer",
    "Backoff",
    "CircuitBreaker",
    "CxrReportGenClient",
    "EmulatorStats",
    "MedImageInsightClient",
    "MedImageParse3DClient",
    "MedImageParseClient",
    "ModelClients",
    "ModelTransport",
    "build_clients",
    "create_app",
    "run_emulator",
    "start_emulator",
]
