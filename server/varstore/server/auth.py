"""Who may call: bearer tokens checked by an interceptor, and the server's TLS credentials.

Clients send ``authorization: Bearer <token>`` metadata. A call without an accepted token is
answered UNAUTHENTICATED before its request is parsed or any servicer code runs. The health
check stays open so that load balancers and orchestrators can probe without credentials; the
health service's ``Watch`` streams, which last, need a token like everything else.

Each token has a role: ``read-write`` (the default) may do everything; ``read-only`` may read
variables, list them, wait for them, look up placements and ask for status and the latest
checkpoint, and nothing that changes the store, the checkpoint folder or a cluster's
placement table. Methods that always change something (``WRITE_METHODS``) are refused
PERMISSION_DENIED before their request is read; ``Run``, ``RunStream`` and ``Place``, which
may only read, are checked by their servicers on the parsed request
(:meth:`TokenAuthInterceptor.read_only`).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from varstore.common.errors import OpError, PermissionDeniedError, UnauthenticatedError
from varstore.server.handlers import method_handler

# Probes (Kubernetes, load balancers, `grpc_health_probe`) carry no credentials.
OPEN_PREFIXES = ("/grpc.health.v1.Health/Check",)

READ_WRITE, READ_ONLY = "read-write", "read-only"
ROLES = (READ_WRITE, READ_ONLY)

# Methods that change the store, the checkpoint folder or the placement table whatever their
# request says: a read-only token is refused them before the request is read.
WRITE_METHODS = frozenset(
    f"/varstore.v1.{service}/{method}" for service, methods in (
        ("VariableService", ("Delete", "Save", "Restore")),
        ("ClusterService", ("SavePart", "CommitParts"))) for method in methods)


@dataclass(frozen=True)
class Token:
    """An accepted bearer token and its role (``read-write`` or ``read-only``)."""

    value: str
    role: str = READ_WRITE


def load_tokens(path: Path) -> list[Token]:
    """The tokens in ``path``: one per line, ``TOKEN`` (read-write) or ``TOKEN ROLE`` with
    ROLE ``read-write`` or ``read-only``; blank lines and ``#`` comments are ignored.

    Raises ``OSError`` when the file cannot be read and ``ValueError`` when it holds no token
    (which would lock every client out), a line of another form or a token twice (the
    message gives line numbers, never a line's text: it may be a token).
    """
    tokens: dict[str, tuple[int, Token]] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) > 2 or (len(fields) == 2 and fields[1] not in ROLES):
            raise ValueError(
                f"token file {path}, line {number}: expected TOKEN or TOKEN ROLE, ROLE one of "
                f"{', '.join(ROLES)}")
        if fields[0] in tokens:
            raise ValueError(f"token file {path}, line {number}: repeats the token of line "
                             f"{tokens[fields[0]][0]}")
        tokens[fields[0]] = (number, Token(*fields))
    if not tokens:
        raise ValueError(f"token file {path} holds no tokens")
    return [token for _, token in tokens.values()]


class TokenAuthInterceptor(grpc.ServerInterceptor):
    """Accepts calls whose ``authorization`` metadata is ``Bearer <one of tokens>``, within
    the token's role (see the module docstring)."""

    def __init__(self, tokens: Iterable[Token]) -> None:
        self._tokens = [(t.value.encode(), t.role) for t in tokens]
        self._read_only_tokens = any(role == READ_ONLY for _, role in self._tokens)

    def role(self, metadata: Iterable[tuple[str, Any]] | None) -> str | None:
        """The role of the call's bearer token; None when it carries no accepted token."""
        values = [v for k, v in metadata or () if k == "authorization"]
        if len(values) != 1 or not isinstance(values[0], str):
            return None
        scheme, _, token = values[0].partition(" ")
        if scheme.lower() != "bearer":
            return None
        given = token.strip().encode()
        # Every token is compared, in constant time, so timing reveals neither which token
        # matched nor how much of one did.
        matches = [hmac.compare_digest(given, t) for t, _ in self._tokens]
        return next((role for (_, role), match in zip(self._tokens, matches, strict=True)
                     if match), None)

    def accepts(self, metadata: Iterable[tuple[str, Any]] | None) -> bool:
        """Whether the call's metadata carries an accepted bearer token."""
        return self.role(metadata) is not None

    def read_only(self, context: grpc.ServicerContext) -> bool:
        """Whether the call (already accepted) was made with a read-only token."""
        return self._read_only_tokens and self.role(context.invocation_metadata()) == READ_ONLY

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                          details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None or details.method.startswith(OPEN_PREFIXES):
            return handler
        role = self.role(details.invocation_metadata)
        if role is None:
            return _rejecting(handler, lambda: UnauthenticatedError(
                "a valid bearer token is required (metadata 'authorization: Bearer <token>')"))
        if role == READ_ONLY and details.method in WRITE_METHODS:
            method = details.method.rsplit("/", 1)[1]
            return _rejecting(handler, lambda: read_only_refusal(method))
        return handler


def read_only_refusal(what: str) -> PermissionDeniedError:
    """The error of a read-only token's call that would change something (``what``)."""
    return PermissionDeniedError(f"{what} needs a read-write token; this call's token is "
                                 "read-only")


def _rejecting(handler: grpc.RpcMethodHandler, error: Callable[[], OpError]
               ) -> grpc.RpcMethodHandler:
    """A handler that answers ``error()`` at once, without reading the request: it takes
    the request as a stream whatever the method's kind, so that nothing reads it (gRPC runs a
    unary handler only once the whole request arrived, and varstore.server.capacity reads a
    unary method's request before the method runs; the wire is the same either way)."""
    def reject(request: Any, context: grpc.ServicerContext) -> Any:
        raise error()

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
