"""Python client of dmoe's Generation API (gRPC): ``dmoe.Client`` and ``dmoe.AsyncClient``.

    import dmoe
    with dmoe.Client("127.0.0.1:7000") as client:
        print(client.generate(chat="Copy this list: bird lake", max_new_tokens=32).text)
"""
from dmoe.client import (AsyncClient, Chunk, Client, DmoeError, ModelInfo, Result,
                         TokenLogprob)
from dmoe.errors import (Cancelled, DeadlineExceeded, FailedPrecondition, InvalidArgument,
                         NotFound, PermissionDenied, ResourceExhausted, Unauthenticated,
                         Unavailable)

__all__ = [
    "AsyncClient", "Cancelled", "Chunk", "Client", "DeadlineExceeded", "DmoeError",
    "FailedPrecondition", "InvalidArgument", "ModelInfo", "NotFound", "PermissionDenied",
    "ResourceExhausted", "Result", "TokenLogprob", "Unauthenticated", "Unavailable",
]
