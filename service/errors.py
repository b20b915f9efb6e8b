"""Plain exceptions the core raises; only service/fronts/status.py maps them to gRPC status codes."""


def first_line(err: BaseException) -> str:
    """An error in one log or status line: its message's first line, or its class when empty."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class ServiceError(Exception):
    """Base class: the message is shown to the client and must say what to do."""


class InvalidInput(ServiceError):
    """The request is malformed: shape, byte length, NaN/Inf, range, count."""


class QueueFull(ServiceError):
    """The bounded queue cannot take the request's rows now; retry with backoff."""


class DeadlineExpired(ServiceError):
    """The request's deadline passed before it could be computed."""


class ModelUnavailable(ServiceError):
    """No model can answer now (shutting down, a device missing, a worker stopping); retry elsewhere."""


class NotFound(ServiceError):
    """The request names a model or version this server does not have."""


class FailedPrecondition(ServiceError):
    """The request cannot be done in the server's present state (e.g. unloading the only model)."""


class Unauthenticated(ServiceError):
    """The call needs a credential the caller did not send (repository control's header)."""


class MessageTooLarge(ServiceError):
    """A request or answer larger than the server's message limit; the same call never fits."""


class Unimplemented(ServiceError):
    """The front does not offer this RPC."""
