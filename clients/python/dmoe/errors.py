"""gRPC errors as typed exceptions: each carries the status ``code`` and the server's message."""
from typing import Dict, Type

import grpc


class DmoeError(Exception):
    """A call failed: ``code`` is the grpc.StatusCode, ``message`` the server's explanation."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class InvalidArgument(DmoeError):
    """The request is malformed; the message names the field."""


class FailedPrecondition(DmoeError):
    """The server cannot serve this request as configured (e.g. no tokenizer for text)."""


class NotFound(DmoeError):
    """Unknown model or resource."""


class ResourceExhausted(DmoeError):
    """The queue is full or the request needs more KV cache than the server has."""


class Unavailable(DmoeError):
    """The server is draining, restarting or unreachable: retry, ideally elsewhere."""


class DeadlineExceeded(DmoeError):
    """The call's timeout passed."""


class Cancelled(DmoeError):
    """The call was cancelled (by this client or the server)."""


class Unauthenticated(DmoeError):
    """Missing or wrong API key."""


class PermissionDenied(DmoeError):
    """The key may not do this."""


_BY_CODE: Dict[grpc.StatusCode, Type[DmoeError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
}


def from_rpc_error(error: grpc.RpcError) -> DmoeError:
    """The typed exception for a failed call (sync or asyncio)."""
    code = error.code()
    return _BY_CODE.get(code, DmoeError)(code, error.details() or "")
