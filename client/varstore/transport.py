"""The client's channel: address, credentials, deadlines, and the one place where calls are
retried and failed calls become ``varstore.errors`` exceptions.

Every call of the blocking client and of ``varstore.aio`` (unary, streamed, server-streaming)
goes through :meth:`Transport.invoke` or :meth:`Transport.invoke_async`, which share
:meth:`Transport.retry_delay` (the retry policy) and :meth:`Transport.error` (the mapping).
"""

from __future__ import annotations

import asyncio
import os
import queue
import random
import re
import socket
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc

from varstore.common.errors import (
    InvalidArgumentError,
    OpError,
    UnavailableError,
    from_rpc_error,
    is_dropped,
)
from varstore.common.protocol import MAX_MESSAGE_BYTES, READ_ONLY_OPS
from varstore.common.tf_config import TF_CONFIG, tf_config_of
from varstore.proto import varstore_pb2 as pb

T = TypeVar("T")

DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_ADDRESS = "localhost:7011"
# Where a client with no address finds one: this variable, else TF_CONFIG's first ps task.
ADDRESS_VARIABLE = "VARSTORE_ADDRESS"
# Attempts of a call that is safe to repeat; the waits between them (0.1 s doubling) add up to
# about 3 s, long enough for a restarted server to come back.
RETRIES = 6
BACKOFF_SECONDS = 0.1
# Attempts of any call the server refused as busy, having changed nothing (see is_busy); the
# waits between them (0.1 s doubling up to BUSY_MAX_DELAY, each cut by a random part so that
# refused clients do not come back together) add up to at most about 13 s.
BUSY_RETRIES = 10
BUSY_MAX_DELAY = 2.0
# How the server (and gRPC's admission limit) say that a call was refused for being one too
# many, before it changed anything.
_BUSY_ENDINGS = ("try again later", "Concurrent RPC limit exceeded!")
# Requests that change nothing on the server, so repeating them after UNAVAILABLE is safe.
_READ_ONLY_REQUESTS = (pb.ListVariablesRequest, pb.StatusRequest, pb.LatestCheckpointRequest,
                       pb.WaitInitializedRequest, pb.ListCheckpointsRequest)
# gRPC's own target syntax (``unix:PATH``, ``dns:///HOST:PORT``, ``ipv4:...``): passed through
# to gRPC unchecked.
_URI = re.compile(r"^(unix|unix-abstract|dns|ipv4|ipv6|vsock):")
# How much of a malformed address an error message quotes.
_QUOTE = 100
# After gRPC failed to connect to a host that accepts our own TCP connection, how long its
# reconnection (0.1 s later) may take before the handshake is reported as what fails.
_HANDSHAKE_GRACE = 1.0
# How long our own TCP connection to the server's host may take while diagnosing.
_PROBE_SECONDS = 0.5


def is_read_only(request: Any) -> bool:
    """Whether ``request`` only reads: a status or listing request, or a ``RunRequest`` that
    creates no variable and whose nodes only read (``read``, ``gather``, ``is_initialized``,
    ``const``)."""
    if isinstance(request, _READ_ONLY_REQUESTS):
        return True
    return (isinstance(request, pb.RunRequest) and not request.variables
            and all(node.op in READ_ONLY_OPS for node in request.nodes))


def is_busy(error: grpc.RpcError) -> bool:
    """Whether ``error`` is the server's "busy, nothing changed" refusal: RESOURCE_EXHAUSTED
    saying "try again later" (varstore's slots, the requests in flight) or gRPC's own
    admission limit. Other RESOURCE_EXHAUSTED errors (a memory limit, a full disk) are not:
    repeating them would not help, or the call may have changed something."""
    return (hasattr(error, "code") and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            and (error.details() or "").endswith(_BUSY_ENDINGS))


def tf_config_address(environ: Mapping[str, str] = os.environ) -> str | None:
    """The first ps task of ``TF_CONFIG`` (as Kubeflow's TFJob sets it), or None.

    Raises ``ValueError`` naming ``TF_CONFIG`` when it is malformed.
    """
    ps = tf_config_of(environ).cluster.get("ps")
    return ps[0] if ps else None


def resolve_address(address: str | None, environ: Mapping[str, str] = os.environ
                    ) -> tuple[str, str]:
    """The server address to use and where it came from, which every message naming the
    address says: ``address`` when given (source ""), else ``$VARSTORE_ADDRESS``, else the
    first ps task of ``TF_CONFIG``, else localhost:7011."""
    if address:
        return address, ""
    if environ.get(ADDRESS_VARIABLE):
        return environ[ADDRESS_VARIABLE], f"${ADDRESS_VARIABLE}"
    found = tf_config_address(environ)
    if found is not None:
        return found, f"{TF_CONFIG}'s cluster.ps[0]"
    return DEFAULT_ADDRESS, f"the default; no address given, ${ADDRESS_VARIABLE} unset"


def parse_address(address: str, source: str = "") -> tuple[str, int] | None:
    """``(host, port)`` of a ``HOST:PORT`` or ``[IPv6]:PORT`` address; None for gRPC's own
    target syntax (``unix:PATH``, ``dns:///...``). Raises ``InvalidArgumentError`` for anything
    else, e.g. a bare port, saying what was probably meant (and the address's ``source``, as
    :func:`resolve_address` names it)."""
    if _URI.match(address):
        return None
    quoted = repr(address[:_QUOTE]) + (f" (from {source})" if source else "")
    named, sep, port = address.rpartition(":")
    host = named[1:-1] if named.startswith("[") and named.endswith("]") else named
    if address.isdigit():
        hint = f"localhost:{address}"
    elif not sep:
        hint = f"{address[:_QUOTE]}:7011"
    elif not port.isdigit() or not 0 < int(port) < 65536:
        # The port the user typed, when it starts with one (localhost:40927x): else 7011.
        typed = re.match(r"\d{1,5}", port)
        guess = typed.group() if typed and 0 < int(typed.group()) < 65536 else "7011"
        hint = f"{named[:_QUOTE] or 'localhost'}:{guess}"
    elif not host:
        hint = f"localhost:{port}"
    else:
        return host, int(port)
    raise InvalidArgumentError(
        f"malformed server address {quoted}: expected HOST:PORT (did you mean {hint}?)")


@dataclass(frozen=True)
class TLSConfig:
    """TLS settings: the CA that signed the server, and a client certificate for mTLS."""

    ca_cert: str | Path | None = None
    client_cert: str | Path | None = None
    client_key: str | Path | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        """Channel credentials for these settings; raises ``OSError`` for unreadable files."""
        def read(path: str | Path | None) -> bytes | None:
            return Path(path).read_bytes() if path else None
        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca_cert), private_key=read(self.client_key),
            certificate_chain=read(self.client_cert))


class Transport:
    """One gRPC channel with the client's token, TLS, deadlines, retry policy and error
    mapping. Raises ``InvalidArgumentError`` for a malformed address."""

    def __init__(self, address: str, *, token: str | None = None, tls: Any = None,
                 timeout: float | None = None, aio: bool = False, source: str = "") -> None:
        """With ``aio``, the channel is a ``grpc.aio`` one (for ``varstore.aio``); ``source``
        says where the address came from (:func:`resolve_address`)."""
        self.address = address
        # The address as every message names it: with its source when it came from the
        # environment (a bad $VARSTORE_ADDRESS is fixed there, not in the code).
        self.named = f"{address} (from {source})" if source else address
        self.endpoint = parse_address(address, source)
        self.timeout = timeout
        self.tls = bool(tls)
        token = token or os.environ.get("VARSTORE_TOKEN")
        self.metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ())
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # gRPC waits 1 s and more before reconnecting to a server that went away; start at
            # 0.1 s so that retries find a restarted server again. (Not min_reconnect_backoff:
            # it is also the time a connection may take, and at 0.1 s a server slower than that
            # to shake hands looked like one refusing.)
            ("grpc.initial_reconnect_backoff_ms", 100),
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
        # A blocking channel left open at exit (a script that never closes its client) is
        # closed while the interpreter can still run gRPC's threads: deallocated later, it can
        # hang the exit waiting for its connectivity-polling thread.
        self._close_at_exit = None if aio else weakref.finalize(self, self.channel.close)

    def close(self) -> None:
        """Closes the channel (of a blocking transport; ``varstore.aio`` awaits
        ``channel.close()``)."""
        if self._close_at_exit is not None:
            self._close_at_exit()

    @property
    def connect_timeout(self) -> float:
        """Seconds to wait for the server when connecting."""
        return self.timeout if self.timeout is not None else DEFAULT_CONNECT_TIMEOUT

    # --- connecting ---------------------------------------------------------------------------

    def wait_ready(self) -> None:
        """Waits until the server answers. Raises ``UnavailableError`` naming the address and
        the likely cause: at once for a refused connection or an unknown host, within about a
        second for a failed handshake (TLS on one side only), after :attr:`connect_timeout`
        for a server that accepts connections but does not answer."""
        states: queue.SimpleQueue[grpc.ChannelConnectivity] = queue.SimpleQueue()
        watch = states.put
        readiness = _Readiness(self)
        self.channel.subscribe(watch, try_to_connect=True)
        try:
            while True:
                try:
                    state = states.get(timeout=readiness.remaining())
                except queue.Empty:
                    raise readiness.expired() from None
                if readiness.ready(state):
                    return
        finally:
            self.channel.unsubscribe(watch)

    async def wait_ready_async(self) -> None:
        """:meth:`wait_ready` for a ``grpc.aio`` channel."""
        readiness = _Readiness(self)
        state = self.channel.get_state(try_to_connect=True)
        while not readiness.ready(state):
            try:
                await asyncio.wait_for(self.channel.wait_for_state_change(state),
                                       readiness.remaining())
            except asyncio.TimeoutError:
                raise readiness.expired() from None
            state = self.channel.get_state(try_to_connect=True)

    # --- calls ----------------------------------------------------------------------------------

    def call(self, method: Callable[..., Any], request: Any, *,
             timeout: float | None = None, idempotent: bool | None = None) -> Any:
        """Calls the unary ``method`` with ``request`` through :meth:`invoke`; by default it
        is retried when :func:`is_read_only` says the request only reads."""
        if idempotent is None:
            idempotent = is_read_only(request)
        return self.invoke(lambda **options: method(request, **options),
                           idempotent=idempotent, timeout=timeout)

    def invoke(self, attempt: Callable[..., T], *, idempotent: bool,
               timeout: float | None = None) -> T:
        """Runs ``attempt(timeout=..., metadata=...)``, one whole call (a unary call, or a
        stream read to its end), and returns its result. An ``idempotent`` call is repeated
        with backoff while the server is unavailable. Raises the ``varstore.errors`` class of
        the failure (see :meth:`error`)."""
        options = self._options(timeout)
        for tries in range(BUSY_RETRIES):
            try:
                return attempt(**options)
            except grpc.RpcError as e:
                delay = self.retry_delay(e, tries, idempotent)
                if delay is None:
                    raise self.error(e) from None
            time.sleep(delay)
        raise AssertionError("unreachable: the last attempt raises")

    async def invoke_async(self, attempt: Callable[..., Awaitable[T]], *, idempotent: bool,
                           timeout: float | None = None) -> T:
        """:meth:`invoke` for ``varstore.aio``: awaits ``attempt(timeout=..., metadata=...)``
        with the same retries and errors."""
        options = self._options(timeout)
        for tries in range(BUSY_RETRIES):
            try:
                return await attempt(**options)
            except grpc.RpcError as e:
                delay = self.retry_delay(e, tries, idempotent)
                if delay is None:
                    raise self.error(e) from None
            await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt raises")

    def _options(self, timeout: float | None) -> dict[str, Any]:
        return {"timeout": timeout or self.timeout, "metadata": self.metadata}

    @staticmethod
    def retry_delay(error: grpc.RpcError, tries: int, idempotent: bool) -> float | None:
        """Seconds to wait before repeating a call that failed with ``error`` after ``tries``
        earlier failures, or None to give up: any call the server refused as busy having
        changed nothing (:func:`is_busy`, at most :data:`BUSY_RETRIES` attempts, with a random
        part); calls that are safe to repeat after UNAVAILABLE (at most :data:`RETRIES`)."""
        if is_busy(error) and tries + 1 < BUSY_RETRIES:
            delay = min(BUSY_MAX_DELAY, BACKOFF_SECONDS * 2 ** tries)
            return delay * random.uniform(0.5, 1.0)
        if not idempotent or tries + 1 >= RETRIES or not hasattr(error, "code"):
            return None
        if error.code() != grpc.StatusCode.UNAVAILABLE and not is_dropped(error):
            return None
        return float(BACKOFF_SECONDS * 2 ** tries)

    def error(self, e: grpc.RpcError) -> OpError:
        """The ``varstore.errors`` exception for a failed call, carrying the server's message
        (UNAVAILABLE names the address and says what happened there, see
        :func:`varstore.common.errors.unavailable`); the gRPC error stays reachable as its
        ``grpc_error`` attribute, and callers raise it ``from None``, so a traceback shows
        ours alone.

        Which calls changed nothing: an ``UnavailableError`` is a call the server did not run
        (a stopping server refused it, gRPC dropped it before it ran, or the server could not
        be reached), except one whose message says that the server went away during the call
        (it was killed): then, and for a ``CancelledError`` (the server stopped while it ran,
        past its grace period), the call may or may not have been applied."""
        error = from_rpc_error(e, self.named)
        error.grpc_error = e
        return error


class _Readiness:
    """What the connectivity states seen while connecting mean: :meth:`ready` says when to stop
    waiting and raises what is already certain, :meth:`expired` names the cause at the end.
    Causes are found by asking the resolver and the host ourselves, as gRPC reports every
    failure as TRANSIENT_FAILURE."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.deadline = time.monotonic() + transport.connect_timeout
        # Set when the host accepted our TCP connection after gRPC's attempt failed: unless
        # gRPC's next attempt (0.1 s later) succeeds, the handshake is what fails.
        self.handshake_deadline: float | None = None

    def remaining(self) -> float:
        """Seconds to wait for the next state before :meth:`expired` decides."""
        end = min(self.deadline, self.handshake_deadline or self.deadline)
        return max(0.0, end - time.monotonic())

    def ready(self, state: grpc.ChannelConnectivity) -> bool:
        """True when connected; raises ``UnavailableError`` when the channel failed for a
        reason that waiting will not change (refused, unknown host, unreachable network)."""
        if state == grpc.ChannelConnectivity.READY:
            return True
        if state == grpc.ChannelConnectivity.SHUTDOWN:
            raise UnavailableError(f"the channel to {self.transport.named} was closed")
        if state == grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            kind, error = self.probe()
            if error is not None and kind != "timeout":
                raise error
            if kind == "open" and self.handshake_deadline is None:
                self.handshake_deadline = time.monotonic() + _HANDSHAKE_GRACE
        return False

    def expired(self) -> UnavailableError:
        """The error when :meth:`remaining` ran out: :meth:`handshake_failed` or
        :meth:`timed_out`."""
        if self.handshake_deadline is not None and time.monotonic() >= self.handshake_deadline:
            return self.handshake_failed()
        return self.timed_out()

    def handshake_failed(self) -> UnavailableError:
        """The error for a host that accepts TCP connections where gRPC's handshake fails."""
        t = self.transport
        setting = ("the server may not use TLS, or another CA signed its certificate" if t.tls
                   else "the server may require TLS: pass tls=varstore.TLSConfig(...)")
        return UnavailableError(
            f"the server at {t.named} accepts connections but the gRPC handshake failed: "
            f"{setting}, or it is not a varstore server")

    def timed_out(self) -> UnavailableError:
        """The error for a server that did not answer within the connect timeout."""
        t = self.transport
        kind, error = self.probe()
        if error is not None and kind != "timeout":
            return error
        if kind == "open":
            return UnavailableError(
                f"the server at {t.named} accepts connections but did not answer within "
                f"{t.connect_timeout:g}s: it is busy or hung, or not a varstore server (wait "
                f"longer with connect(timeout=...) or --timeout)")
        why = "connections to it time out" if kind == "timeout" else "no answer"
        return UnavailableError(
            f"cannot reach a varstore server at {t.named} within {t.connect_timeout:g}s: "
            f"{why} (is the host up and `varstore serve` running there? is a firewall "
            f"dropping the connections?)")

    def probe(self) -> tuple[str, UnavailableError | None]:
        """Resolves and connects to the address ourselves: ``("open", None)`` when a TCP
        connection succeeds, ``("unprobed", None)`` for gRPC target syntax, else the kind of
        failure (``unknown_host``, ``refused``, ``timeout``, ``unreachable``) and its error."""
        t = self.transport
        if t.endpoint is None:
            return "unprobed", None
        host, port = t.endpoint
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError):
            return "unknown_host", UnavailableError(
                f"cannot reach {t.named}: unknown host {host[:_QUOTE]!r} (check the name; "
                f"localhost is this machine)")
        failures: list[OSError] = []
        for family, kind, proto, _, sockaddr in infos:
            try:
                with socket.socket(family, kind, proto) as s:
                    s.settimeout(_PROBE_SECONDS)
                    s.connect(sockaddr)
                return "open", None
            except OSError as e:
                failures.append(e)
        if any(isinstance(e, ConnectionRefusedError) for e in failures):
            return "refused", UnavailableError(
                f"no varstore server at {t.named}: connection refused (start one with "
                f"`varstore serve --port {port}`, or check the host and port)")
        if failures and all(isinstance(e, TimeoutError) for e in failures):
            return "timeout", UnavailableError(f"connections to {t.named} time out")
        reason = (failures[0].strerror or str(failures[0])) if failures else "no address"
        return "unreachable", UnavailableError(
            f"cannot connect to {t.named}: {reason} (check the host, the port and "
            f"firewalls)")
