"""Builds the varstore gRPC server from a :class:`ServerConfig`."""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from varstore.common.errors import OpError
from varstore.common.protocol import MAX_MESSAGE_BYTES
from varstore.proto import varstore_pb2 as pb
from varstore.server import cluster_service
from varstore.server.auth import (
    READ_WRITE,
    Token,
    TokenAuthInterceptor,
    load_tokens,
    server_credentials,
)
from varstore.server.budget import MemoryBudget
from varstore.server.capacity import Capacity, CapacityInterceptor, CapacityLimits
from varstore.server.checkpoint_timer import SaveTimer
from varstore.server.checkpoints import CheckpointManager
from varstore.server.cluster import SHARD_NO_FINAL_SAVE, ClusterSpec, local_shards
from varstore.server.cluster_saver import ClusterSaver, shard_channel, shard_credentials
from varstore.server.executor import Executor
from varstore.server.folder_lock import FolderLock, lock_folder
from varstore.server.metrics import MetricsInterceptor, ServerMetrics
from varstore.server.placement_guard import CreateGuard
from varstore.server.servicer import VariableServicer, add_to_server
from varstore.server.settings import check_settings
from varstore.server.shard_restart import RestartOwners
from varstore.server.shutdown import QUIET_SECONDS, ShutdownGate
from varstore.server.status import StatusInterceptor
from varstore.server.store import VariableStore

log = logging.getLogger(__name__)

DEFAULT_PORT = 7011
# Calls admitted per RPC thread, and calls waiting to be taken (see create_server).
ADMITTED_PER_THREAD = 4
PENDING_CALLS = 1 << 14
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["VariableService"].full_name


@dataclass
class ServerConfig:
    """Settings of one server; ``varstore serve``'s flags and config file fill it."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    checkpoint_dir: Path = field(default_factory=lambda: Path("checkpoints"))
    restore: str | None = None
    save_every: float = 0.0
    keep: int = 5
    max_memory: int = 0
    # Largest request (all tensor bytes of one call) the server accepts.
    max_request_bytes: int = 8 << 30
    max_workers: int = 32
    metrics_port: int | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    token_file: Path | None = None
    # A cluster's shard addresses by task index, and this shard's (varstore.server.cluster).
    cluster: tuple[str, ...] = ()
    task_index: int = 0
    # Listen on a non-loopback address with neither a token file nor TLS.
    allow_insecure_remote: bool = False
    # Write a final checkpoint at shutdown when the store changed since the last one (on a
    # cluster of several shards, shard 0 writes one of the whole cluster and the others none:
    # see SHARD_NO_FINAL_SAVE).
    save_on_exit: bool = True
    # Cancel a stream whose peer sends (or reads) nothing for this long.
    stream_idle_seconds: float = 20.0
    # Under ``varstore serve --shards N``: a private folder where shard I also listens on
    # ``shard-I.sock``, so that shard 0 saves the cluster over it (varstore.server.shards).
    local_socket_dir: Path | None = None

    def __post_init__(self) -> None:
        """Raises ``ValueError`` naming the flag of a setting of the wrong type or out of
        range (:func:`varstore.server.settings.check_settings`)."""
        check_settings(vars(self))


@dataclass
class Server:
    """A built server: the gRPC server, its bound port and the state behind it."""

    grpc_server: grpc.Server
    port: int
    store: VariableStore
    checkpoints: CheckpointManager
    timer: SaveTimer
    health: health.HealthServicer
    metrics: ServerMetrics
    capacity: Capacity
    gate: ShutdownGate
    # The bound ``/metrics`` port, when the config asked for one.
    metrics_port: int | None = None
    save_on_exit: bool = True
    # Why no final checkpoint is written when ``save_on_exit`` is off, for the log.
    why_not_saved: str = "--no-save-on-exit"
    # A shard's own exit save instead (varstore.server.cluster_service.save_shard_snapshot).
    snapshot: Callable[[], bool] | None = None
    # The lock on the checkpoint folder, released when the server stopped.
    folder_lock: FolderLock | None = None

    def start(self) -> None:
        """Starts serving (the port is already bound); the health service reports SERVING."""
        self.grpc_server.start()
        for service in ("", SERVICE_NAME):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self.timer.start()

    def stop(self, grace: float | None = 5.0, quiet: float = QUIET_SECONDS) -> bool:
        """Reports NOT_SERVING, ends every wait at once and refuses every call that has not
        started (their callers get UNAVAILABLE: nothing was changed) until none came for
        ``quiet`` seconds (see varstore.server.shutdown), then stops accepting calls and
        gives the calls that run up to ``grace`` seconds before they are cancelled; finishes
        a checkpoint in progress and writes a final one when the store changed since the
        last (unless ``save_on_exit`` is off: then it logs what is discarded); then closes
        the metrics endpoint. Returns False when that final checkpoint was due and could not
        be written."""
        self.health.enter_graceful_shutdown()
        self.timer.pause()
        self.gate.close(quiet)
        self.grpc_server.stop(grace).wait()
        self.capacity.close()
        snapshot = self.snapshot() if self.snapshot is not None else True
        written = self.timer.stop(save=self.save_on_exit, why_not=self.why_not_saved) and \
            snapshot
        self.metrics.close()
        if self.folder_lock is not None:
            self.folder_lock.release()
        return written


def create_server(config: ServerConfig) -> Server:
    """Builds the store, executor, checkpoint manager and gRPC server, and binds the port.

    Raises ``OSError`` when the address cannot be bound (e.g. the port is in use) or a TLS or
    token file cannot be read, ``ValueError`` for inconsistent TLS settings, an empty or
    malformed token file (or one with only read-only tokens for a cluster) or a non-loopback
    address without protection (see :func:`check_exposure`), ``OpError`` (NotFoundError,
    DataLossError...) when ``config.restore`` fails, ``FailedPreconditionError`` when
    another server holds the checkpoint folder (:mod:`varstore.server.folder_lock`; this one
    holds it until :meth:`Server.stop`).
    """
    check_exposure(config)
    lock = lock_folder(Path(config.checkpoint_dir),
                       config.task_index if len(config.cluster) > 1 else None)
    try:
        server = _build(config)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    server.folder_lock = lock
    return server


def _build(config: ServerConfig) -> Server:
    """:func:`create_server` once the checkpoint folder is locked."""
    # One budget for all the server holds for clients: variables, and every call in flight.
    store = VariableStore(budget=MemoryBudget(config.max_memory, config.max_request_bytes))
    executor = Executor(store, max_tensor_bytes=config.max_memory or 1 << 36)
    metrics = ServerMetrics(store)
    checkpoints = CheckpointManager(store, Path(config.checkpoint_dir), metrics=metrics)
    # Before the port is bound: no client ever sees a store that is still being restored.
    spec = ClusterSpec(config.cluster, config.task_index,
                       local_shards(config.local_socket_dir, len(config.cluster))
                       ) if config.cluster else None
    saves_cluster = spec is not None and len(spec.shards) > 1 and spec.task_index == 0
    save_every = config.save_every
    if spec is not None and len(spec.shards) > 1 and not saves_cluster and save_every:
        log.info("--save-every: shard 0's timer saves the whole cluster; this shard writes "
                 "its part then")
        save_every = 0.0
    credentials_of_shards = shard_credentials(config.tls_cert, config.tls_key,
                                              config.tls_client_ca)
    tokens = load_tokens(config.token_file) if config.token_file is not None else None
    token_of_shards = _token_of_shards(tokens, spec)
    timer = SaveTimer(checkpoints, save_every, config.keep, ClusterSaver(
        spec, checkpoints, credentials_of_shards, token_of_shards)
        if saves_cluster and spec is not None else None)
    auth = TokenAuthInterceptor(tokens) if tokens is not None else None
    cluster_servicer = cluster_service.ClusterServicer(spec, checkpoints, auth=auth)
    owners = None
    if spec is not None and len(spec.shards) > 1:
        cluster_spec = spec
        metadata = (("authorization", f"Bearer {token_of_shards}"),) if token_of_shards else ()

        def channels(k: int) -> list[grpc.Channel]:
            """Shard k's private socket, and its port for a shard restarted on its own."""
            return [shard_channel(cluster_spec, k, credentials_of_shards, local)
                    for local in ((True, False) if cluster_spec.local_shards else (False,))]
        # Every create checks with shard 0's table (varstore.server.placement_guard), and so
        # does the start-up restore (varstore.server.shard_restart).
        cluster_servicer.guard = CreateGuard(
            spec.task_index, cluster_servicer.table if spec.task_index == 0 else None,
            channels(0) if spec.task_index else (), metadata, spec.shards[0])
        owners = RestartOwners(spec.task_index, spec.shards, cluster_servicer.guard,
                               channels, metadata)
    cluster_service.recover_shard(checkpoints, spec, config.restore, owners)
    if config.restore is None:
        _hint_restore(checkpoints, config.checkpoint_dir)
    capacity = Capacity(CapacityLimits.for_workers(
        config.max_workers, stream_idle_seconds=config.stream_idle_seconds))
    servicer = VariableServicer(store, executor, checkpoints, config.max_request_bytes,
                                capacity, metrics.load,
                                len(spec.shards) if spec is not None else 1,
                                cluster_servicer.guard, auth=auth)
    # Statuses outermost (every error below becomes one), then the refusals of a stopping
    # server, then the limits (which see requests as the bytes that came), then metrics
    # (which count the calls authentication refuses).
    gate = ShutdownGate(store.stopping)
    interceptors: list[grpc.ServerInterceptor] = [
        StatusInterceptor(), gate, CapacityInterceptor(capacity), MetricsInterceptor(metrics)]
    if auth is not None:
        interceptors.append(auth)
    credentials = server_credentials(config.tls_cert, config.tls_key, config.tls_client_ca)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.max_workers,
                                   thread_name_prefix="varstore-rpc"),
        interceptors=interceptors,
        # Calls admitted at once (running or queued for a thread): past it gRPC answers
        # RESOURCE_EXHAUSTED, which clients retry with backoff, instead of queueing without
        # bound (a client pipelining thousands of calls saw some end CANCELLED).
        maximum_concurrent_rpcs=config.max_workers * ADMITTED_PER_THREAD,
        options=[
            # A unary request past --max-request-bytes is RESOURCE_EXHAUSTED before it is read.
            ("grpc.max_receive_message_length",
             min(config.max_request_bytes, MAX_MESSAGE_BYTES)),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # Fail fast on a busy port instead of silently sharing it with another process.
            ("grpc.so_reuseport", 0),
            # Calls gRPC holds until the server takes them (then maximum_concurrent_rpcs
            # refuses the excess with a status clients retry): gRPC's own limits (1000, and
            # random refusals up to 3000) cancel calls with a bare CANCELLED nobody can retry.
            ("grpc.server.max_pending_requests", PENDING_CALLS),
            ("grpc.server.max_pending_requests_hard_limit", PENDING_CALLS),
        ],
    )
    add_to_server(servicer, server)
    cluster_service.add_to_server(cluster_servicer, server)
    # Blocking Watch streams: see varstore.server.capacity for why not the non-blocking kind.
    health_servicer = health.HealthServicer(experimental_non_blocking=False)
    health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, cluster_service.SERVICE_NAME, health.SERVICE_NAME,
         reflection.SERVICE_NAME), server)
    host = f"[{config.host}]" if ":" in config.host and "[" not in config.host else config.host
    address = f"{host}:{config.port}"
    # gRPC says only "Failed to bind to address", and that GRPC_VERBOSITY=debug tells more.
    cannot = (f"cannot listen on {address}: the port is in use (another varstore serve? "
              f"`varstore status --address {address}` tells) or {config.host} is no address "
              "of this machine; choose another --port (0: a free one) or --host")
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError:
        raise OSError(cannot) from None
    if port == 0:
        raise OSError(cannot)
    if spec is not None and spec.local_shards:
        # Plain gRPC on a socket only this user reaches (its folder is private): shard 0 saves
        # the cluster through the others' whatever TLS their network port asks for.
        if server.add_insecure_port(spec.local_shards[spec.task_index]) == 0:
            raise OSError(f"cannot listen on {spec.local_shards[spec.task_index]}")
    metrics_port = None
    if config.metrics_port is not None:
        try:
            metrics_port = metrics.serve_http(config.host, config.metrics_port)
        except OSError:
            server.stop(None)
            raise
        log.info("metrics at http://%s:%d/metrics", config.host, metrics_port)
    log.info("varstore listening on %s:%d (pid %d%s)", config.host, port, os.getpid(),
             ", TLS" if credentials is not None else "")
    if spec is not None and len(spec.shards) > 1 and not saves_cluster:
        shard = spec
        return Server(server, port, store, checkpoints, timer, health_servicer, metrics,
                      capacity, gate, metrics_port, False, SHARD_NO_FINAL_SAVE,
                      (lambda: cluster_service.save_shard_snapshot(checkpoints, shard))
                      if config.save_on_exit else None)
    return Server(server, port, store, checkpoints, timer, health_servicer, metrics,
                  capacity, gate, metrics_port, config.save_on_exit)


def _hint_restore(checkpoints: CheckpointManager, folder: Path | str) -> None:
    """Logs that the server starts empty although ``folder`` holds a checkpoint (the final one
    of a Ctrl-C, say), and that ``--restore latest`` loads it. Raises nothing."""
    try:
        newest = checkpoints.latest()
    except OpError:
        return
    if newest is not None:
        log.info("starting with no variables; the newest checkpoint in %s is %s "
                 "(--restore latest loads it)", folder, newest)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 in brackets or not) is this machine's
    loopback interface only."""
    host = host.strip().removeprefix("[").removesuffix("]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _token_of_shards(tokens: list[Token] | None, spec: ClusterSpec | None) -> str | None:
    """The token shards of a cluster send each other: the first read-write one.

    Raises ``ValueError`` for a cluster of several shards whose token file has only
    read-only tokens (its shards could not save or place variables for each other).
    """
    if tokens is None:
        return None
    token = next((t.value for t in tokens if t.role == READ_WRITE), None)
    if token is None and spec is not None and len(spec.shards) > 1:
        raise ValueError("the shards of a cluster need a read-write token in --token-file "
                         "to call each other; it lists only read-only tokens")
    return token


def check_exposure(config: ServerConfig) -> None:
    """Refuses a non-loopback address without a token file or TLS unless
    ``allow_insecure_remote`` says so (as Redis's protected mode does), and warns when it does.

    Raises ``ValueError`` naming the address and the ways out.
    """
    if is_loopback(config.host) or config.token_file is not None \
            or config.tls_cert is not None:
        return
    if not config.allow_insecure_remote:
        raise ValueError(
            f"refusing to listen on {config.host} without --token-file or TLS: anyone who "
            "can reach it could read and change every variable. Pass --token-file FILE or "
            "--tls-cert/--tls-key, or --allow-insecure-remote if the network is yours alone "
            "(or --host 127.0.0.1 for this machine only)")
    log.warning("listening on %s with neither a token nor TLS (--allow-insecure-remote): "
                "anyone who can reach this address can read and change every variable",
                config.host)
