"""Who may call: bearer tokens checked by an interceptor, and the server's TLS credentials.

Clients send ``authorization: Bearer <token>`` metadata. A call without an accepted token is
answered UNAUTHENTICATED before its request is parsed or any servicer code runs. The health
check stays open so that load balancers and orchestrators can probe without credentials; the
health service's ``Watch`` streams, which last, need a token like everything else.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import grpc

from varstore.common.errors import UnauthenticatedError
from varstore.server.handlers import method_handler

# Probes (Kubernetes, load balancers, `grpc_health_probe`) carry no credentials.
OPEN_PREFIXES = ("/grpc.health.v1.Health/Check",)


def load_tokens(path: Path) -> list[str]:
    """The tokens in ``path``: one per line; blank lines and ``#`` comments are ignored.

    Raises ``OSError`` when the file cannot be read and ``ValueError`` when it holds no token
    (which would lock every client out).
    """
    tokens = [line.strip() for line in Path(path).read_text().splitlines()]
    tokens = [t for t in tokens if t and not t.startswith("#")]
    if not tokens:
        raise ValueError(f"token file {path} holds no tokens")
    return tokens


class TokenAuthInterceptor(grpc.ServerInterceptor):
    """Accepts calls whose ``authorization`` metadata is ``Bearer <one of tokens>``."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self._tokens = [t.encode() for t in tokens]

    def accepts(self, metadata: Iterable[tuple[str, Any]] | None) -> bool:
        """Whether the call's metadata carries an accepted bearer token."""
        values = [v for k, v in metadata or () if k == "authorization"]
        if len(values) != 1 or not isinstance(values[0], str):
            return False
        scheme, _, token = values[0].partition(" ")
        if scheme.lower() != "bearer":
            return False
        given = token.strip().encode()
        # Every token is compared, in constant time, so timing reveals neither which token
        # matched nor how much of one did.
        return any([hmac.compare_digest(given, t) for t in self._tokens])

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                          details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None or details.method.startswith(OPEN_PREFIXES) \
                or self.accepts(details.invocation_metadata):
            return handler
        return _rejecting(handler)


def _rejecting(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler that answers UNAUTHENTICATED at once, without reading the request: it takes
    the request as a stream whatever the method's kind, so that nothing reads it (gRPC runs a
    unary handler only once the whole request arrived, and varstore.server.capacity reads a
    unary method's request before the method runs; the wire is the same either way)."""
    def reject(request: Any, context: grpc.ServicerContext) -> Any:
        raise UnauthenticatedError(
            "a valid bearer token is required (metadata 'authorization: Bearer <token>')")

    def reject_stream(request: Any, context: grpc.ServicerContext) -> Any:
        reject(request, context)
        yield

    return method_handler(True, handler.response_streaming,
                          reject_stream if handler.response_streaming else reject)


def server_credentials(cert: Path | None, key: Path | None, client_ca: Path | None
                       ) -> grpc.ServerCredentials | None:
    """TLS credentials from PEM files, or None for plaintext; with ``client_ca``, clients
    must present a certificate it signed (mutual TLS).

    Raises ``ValueError`` for an incomplete combination and ``OSError`` for unreadable files.
    """
    if cert is None and key is None:
        if client_ca is not None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if cert is None or key is None:
        raise ValueError("TLS needs both --tls-cert and --tls-key")
    ca = Path(client_ca).read_bytes() if client_ca is not None else None
    return grpc.ssl_server_credentials([(Path(key).read_bytes(), Path(cert).read_bytes())],
                                       root_certificates=ca, require_client_auth=ca is not None)
