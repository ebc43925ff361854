"""The error hierarchy. Every stage raises these; the gateway maps them to HTTP in one place."""

from __future__ import annotations

from shared.contracts import ErrorInfo, ErrorReply


class SluiceError(Exception):
    status = 500
    type = "internal_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def info(self) -> ErrorInfo:
        return ErrorInfo(status=self.status, type=self.type, message=self.message,
                         code=self.code, param=self.param)


class InvalidRequest(SluiceError):
    status = 400
    type = "invalid_request_error"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class AuthenticationFailed(SluiceError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class ModelNotFound(SluiceError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class PayloadTooLarge(SluiceError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class Overloaded(SluiceError):
    """Admission refused; the client should retry after `retry_after` seconds."""

    status = 429
    type = "rate_limit_error"
    code = "overloaded"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(Overloaded):
    status = 503
    type = "service_unavailable"
    code = "unavailable"


class BusUnavailable(Unavailable):
    """Kafka has been unreachable for too long: the stream may be resumed once it is back."""

    code = "bus_unavailable"


class StreamNotFound(SluiceError):
    status = 404
    type = "invalid_request_error"
    code = "stream_not_found"


class UpstreamTimeout(SluiceError):
    status = 504
    type = "timeout"
    code = "upstream_timeout"


class DeadlineExceeded(UpstreamTimeout):
    """The request's deadline passed: nobody waits for the answer any more."""

    code = "deadline_exceeded"


class InternalError(SluiceError):
    pass


class RemoteError(SluiceError):
    """An error that another stage reported over Kafka, carried as-is."""

    def __init__(self, info: ErrorInfo) -> None:
        super().__init__(info.message, param=info.param, code=info.code)
        self.status = info.status
        self.type = info.type


def as_sluice_error(exc: BaseException) -> SluiceError:
    """A SluiceError as is; anything else is reported as an internal error."""
    return exc if isinstance(exc, SluiceError) else InternalError(f"internal error: {type(exc).__name__}")


def error_reply(exc: BaseException, *, request_id: str, source: str, seq: int,
                epoch: int = 0) -> ErrorReply:
    return ErrorReply(request_id=request_id, source=source, seq=seq, epoch=epoch,
                      error=as_sluice_error(exc).info())
