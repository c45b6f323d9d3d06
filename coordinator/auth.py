"""Every call to the JobService carries a bearer token: checked here, before any handler runs.

The interceptor turns ``authorization: Bearer <token>`` into a ``Principal`` and hands it to the
handler on its context (``context.principal``); a call without a valid token never reaches one
(UNAUTHENTICATED), nor does a viewer's submit or cancel (PERMISSION_DENIED). Only health checks
(probes) need no token; reflection does (`grpcurl -H 'authorization: Bearer …'`), or anyone could
hold server threads with its streams. Bytes that do not parse as the request
are the client's error (INVALID_ARGUMENT), not the server's (gRPC's own answer is INTERNAL).
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import grpc

from coordinator.tenancy import Principal

OPEN_METHODS = frozenset({"/grpc.health.v1.Health/Check"})
WRITE_METHODS = frozenset({"SubmitJob", "SubmitRecipe", "CancelJob"})


class MalformedRequest:
    """What a request that does not parse deserializes to; its handler refuses it."""

    def __init__(self, error: Exception) -> None:
        self.error = error


class CallContext:
    """A handler's context with the caller's principal beside it; everything else is the call's."""

    def __init__(self, context: grpc.ServicerContext, principal: Principal) -> None:
        self._context, self.principal = context, principal

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def bearer_token(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


class AuthInterceptor(grpc.ServerInterceptor):
    def __init__(self, authenticate: Callable[[str], Principal | None]) -> None:
        self.authenticate = authenticate

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
                          details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        method = details.method.rpartition("/")[2]
        if handler is None or details.method in OPEN_METHODS:
            return handler
        token = bearer_token(details.invocation_metadata)
        principal = self.authenticate(token) if token else None
        if principal is None:
            why = ("no bearer token (metadata 'authorization: Bearer <token>'; `internvideo token create` makes one)"
                   if token is None else "the bearer token is unknown, malformed or revoked")
            return _refusing(handler, grpc.StatusCode.UNAUTHENTICATED, why)
        if method in WRITE_METHODS and not principal.role.writes:
            return _refusing(handler, grpc.StatusCode.PERMISSION_DENIED,
                             f"{method}: the token's role, {principal.role.value}, may only read")
        return _with_principal(handler, principal)


def _behaviour_field(handler: grpc.RpcMethodHandler) -> str:
    return {(False, False): "unary_unary", (False, True): "unary_stream", (True, False): "stream_unary",
            (True, True): "stream_stream"}[(handler.request_streaming, handler.response_streaming)]


def _with_principal(handler: grpc.RpcMethodHandler, principal: Principal) -> grpc.RpcMethodHandler:
    field = _behaviour_field(handler)
    behaviour, deserialize = getattr(handler, field), handler.request_deserializer

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as err:  # noqa: BLE001 — protobuf's DecodeError, or whatever a parser raises
            return MalformedRequest(err)

    def call(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, MalformedRequest):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the request does not parse: {request.error}")
        return behaviour(request, CallContext(context, principal))

    return handler._replace(request_deserializer=parse, **{field: call})


def _refusing(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, details: str) -> grpc.RpcMethodHandler:
    def refuse(request: Any, context: grpc.ServicerContext) -> None:
        context.abort(code, details)

    # The body of a refused call is never parsed (gRPC takes None for a failed parse: a stand-in, then).
    return handler._replace(request_deserializer=lambda data: data, **{_behaviour_field(handler): refuse})


class StreamLimit:
    """At most ``per_token`` open streams per token: one client cannot take every server thread."""

    def __init__(self, per_token: int) -> None:
        self.per_token = per_token
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, token_id: str) -> bool:
        with self._lock:
            if self._open.get(token_id, 0) >= self.per_token:
                return False
            self._open[token_id] = self._open.get(token_id, 0) + 1
            return True

    def release(self, token_id: str) -> None:
        with self._lock:
            self._open[token_id] -= 1
            if not self._open[token_id]:
                del self._open[token_id]
