"""The gateway's exception tree, in one place.

Each class says what the worker boundary does with it: ``retryable`` errors are tried again with
backoff, ``quarantine`` errors set the offending data aside with the reason, and ``fatal`` errors
stop the process (only configuration problems at start-up). Everything else is caught only at the
one worker boundary, logged with its traceback, and fails that job alone.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base class of every error the gateway raises on purpose."""

    retryable: bool = False
    quarantine: bool = False
    fatal: bool = False


class ConfigError(GatewayError):
    """A setting or rules file is invalid; the message names the setting. Stops start-up."""

    fatal = True


class InvalidDatasetError(GatewayError):
    """Received data that cannot be stored as a valid instance; it is quarantined."""

    quarantine = True


class MissingIdentifierError(InvalidDatasetError):
    """A readable dataset lacks a Type 1 identifying UID (SOP Instance, Study, Series...)."""


class InstanceTooLargeError(InvalidDatasetError):
    """Received data over a size cap (an instance, or a deflated data set once inflated)."""


class StorageFullError(GatewayError):
    """Free disk space is under the watermark; new work is refused until space returns."""

    retryable = True


class ModelError(GatewayError):
    """A model endpoint call failed."""


class TransientModelError(ModelError):
    """A model call failed in a way that may succeed later (timeouts, 408, 429, 5xx)."""

    retryable = True

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PermanentModelError(ModelError):
    """A model call failed in a way a retry cannot fix (400, 401/403 after a token refresh, 404,
    424 with a 4xx model status)."""


class CircuitOpenError(ModelError):
    """The endpoint failed repeatedly; calls fail fast (no request is sent) until the breaker
    probes it again in ``retry_after_s``. The message leads with the endpoint's last failure."""

    retryable = True

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ConversionError(GatewayError):
    """A model answer could not be turned into a valid DICOM object; the job fails."""


class SendError(GatewayError):
    """Sending to a destination failed."""


class TransientSendError(SendError):
    """The destination may accept later (refused, timed out, out of resources)."""

    retryable = True


class PermanentSendError(SendError):
    """The destination will not accept as configured (association rejected, SOP class refused)."""


class ObjectStoreError(GatewayError):
    """The S3 spool bucket (``spool_url``) failed a request: an upload is retried with backoff,
    a read fails the step that needed it, which is retried the same way. The message names the
    setting at fault (``setting``) when the bucket refused the credentials or does not exist,
    never a credential itself."""

    retryable = True

    def __init__(self, message: str, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


class ObjectMissingError(ObjectStoreError):
    """The bucket has no object under the key asked for (purged, or never uploaded): a reader
    treats it as a missing file."""

    retryable = False
