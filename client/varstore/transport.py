"""The client's channel: address, credentials, deadlines, retries and error mapping."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from varstore.common.errors import UnavailableError, from_rpc_error
from varstore.common.protocol import MAX_MESSAGE_BYTES, READ_ONLY_OPS
from varstore.proto import varstore_pb2 as pb

DEFAULT_CONNECT_TIMEOUT = 10.0
# Attempts of a call that is safe to repeat; the waits between them (0.1 s doubling) add up to
# about 3 s, long enough for a restarted server to come back.
RETRIES = 6
BACKOFF_SECONDS = 0.1
# Requests that change nothing on the server, so repeating them after UNAVAILABLE is safe.
_READ_ONLY_REQUESTS = (pb.ListVariablesRequest, pb.StatusRequest, pb.LatestCheckpointRequest,
                       pb.WaitInitializedRequest)


def is_read_only(request: Any) -> bool:
    """Whether ``request`` only reads: a status or listing request, or a ``RunRequest`` that
    creates no variable and whose nodes only read (``read``, ``gather``, ``is_initialized``,
    ``const``)."""
    if isinstance(request, _READ_ONLY_REQUESTS):
        return True
    return (isinstance(request, pb.RunRequest) and not request.variables
            and all(node.op in READ_ONLY_OPS for node in request.nodes))


@dataclass(frozen=True)
class TLSConfig:
    """TLS settings: the CA that signed the server, and a client certificate for mTLS."""

    ca_cert: str | Path | None = None
    client_cert: str | Path | None = None
    client_key: str | Path | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        """Channel credentials for these settings."""
        def read(path: str | Path | None) -> bytes | None:
            return Path(path).read_bytes() if path else None
        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca_cert), private_key=read(self.client_key),
            certificate_chain=read(self.client_cert))


class Transport:
    """One gRPC channel with the client's token, TLS, deadlines and retry policy."""

    def __init__(self, address: str, *, token: str | None = None, tls: Any = None,
                 timeout: float | None = None, aio: bool = False) -> None:
        """With ``aio``, the channel is a ``grpc.aio`` one (for ``varstore.aio``)."""
        self.address = address
        self.timeout = timeout
        token = token or os.environ.get("VARSTORE_TOKEN")
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # gRPC waits 1 s and more before reconnecting to a server that went away; start at
            # 0.1 s so that retries find a restarted server again.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        channels: Any = grpc.aio if aio else grpc
        if tls:
            config = tls if isinstance(tls, TLSConfig) else TLSConfig()
            if config.server_name:
                options.append(("grpc.ssl_target_name_override", config.server_name))
            self.channel = channels.secure_channel(address, config.credentials(),
                                                   options=options)
        else:
            self.channel = channels.insecure_channel(address, options=options)

    def close(self) -> None:
        """Closes the channel."""
        self.channel.close()

    def wait_ready(self) -> None:
        """Waits until the server answers; raises ``UnavailableError`` naming the address."""
        try:
            grpc.channel_ready_future(self.channel).result(timeout=self.connect_timeout)
        except grpc.FutureTimeoutError:
            raise self.unreachable() from None

    @property
    def connect_timeout(self) -> float:
        """Seconds to wait for the server when connecting."""
        return self.timeout if self.timeout is not None else DEFAULT_CONNECT_TIMEOUT

    def unreachable(self) -> UnavailableError:
        """The error for a server that did not answer within :attr:`connect_timeout`."""
        return UnavailableError(
            f"cannot reach a varstore server at {self.address} within "
            f"{self.connect_timeout:g}s (is `varstore serve` running there?)")

    def call(self, method: Callable[..., Any], request: Any, *,
             timeout: float | None = None, idempotent: bool | None = None) -> Any:
        """Calls ``method``; maps failures to varstore errors.

        Calls that are safe to repeat (``idempotent``, by default :func:`is_read_only` of the
        request) are retried with backoff while the server is unavailable.
        """
        if idempotent is None:
            idempotent = is_read_only(request)
        attempts = RETRIES if idempotent else 1
        for attempt in range(attempts):
            try:
                return method(request, timeout=timeout or self.timeout, metadata=self.metadata)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.UNAVAILABLE and attempt + 1 < attempts:
                    time.sleep(BACKOFF_SECONDS * 2 ** attempt)
                    continue
                raise self.error(e) from e
        raise AssertionError("unreachable")

    def iterate(self, method: Callable[..., Any], request: Any) -> Iterator[Any]:
        """Calls a server-streaming ``method``; yields its messages, mapping failures."""
        try:
            yield from method(request, timeout=self.timeout, metadata=self.metadata)
        except grpc.RpcError as e:
            raise self.error(e) from e

    def error(self, e: grpc.RpcError) -> Exception:
        """The varstore error for a failed call (UNAVAILABLE names the address)."""
        error = from_rpc_error(e)
        if isinstance(error, UnavailableError):
            error = UnavailableError(f"varstore server at {self.address} is unavailable: "
                                     f"{error.message}")
        return error
