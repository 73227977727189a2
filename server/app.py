"""Builds the varstore gRPC server from a :class:`ServerConfig`."""

from __future__ import annotations

import logging
import os
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from varstore.proto import varstore_pb2_grpc as pb_grpc
from varstore.server.checkpoints import CheckpointManager
from varstore.server.executor import Executor
from varstore.server.servicer import VariableServicer
from varstore.server.store import VariableStore

log = logging.getLogger(__name__)

DEFAULT_PORT = 7011
# One gRPC message (a unary request or one stream chunk) may carry at most this much; larger
# payloads travel as streams of 1 MiB chunks, so this only bounds a single message.
MAX_MESSAGE_BYTES = 64 << 20


@dataclass
class ServerConfig:
    """Settings of one server; ``varstore serve``'s flags and config file fill it."""

    host: str = "0.0.0.0"
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


@dataclass
class Server:
    """A built server: the gRPC server, its bound port and the state behind it."""

    grpc_server: grpc.Server
    port: int
    store: VariableStore
    servicer: VariableServicer
    checkpoints: CheckpointManager

    def start(self) -> None:
        """Starts serving (the port is already bound)."""
        self.grpc_server.start()

    def stop(self, grace: float | None = 5.0) -> None:
        """Stops accepting calls and waits up to ``grace`` seconds for those in flight."""
        self.grpc_server.stop(grace).wait()


def create_server(config: ServerConfig) -> Server:
    """Builds the store, executor, checkpoint manager and gRPC server, and binds the port.

    Raises ``OSError`` when the address cannot be bound (e.g. the port is in use).
    """
    store = VariableStore(max_memory=config.max_memory)
    executor = Executor(store, max_tensor_bytes=config.max_memory or 1 << 36)
    checkpoints = CheckpointManager(store, Path(config.checkpoint_dir))
    servicer = VariableServicer(store, executor, checkpoints, config.max_request_bytes)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.max_workers,
                                   thread_name_prefix="varstore-rpc"),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # Fail fast on a busy port instead of silently sharing it with another process.
            ("grpc.so_reuseport", 0),
        ],
    )
    pb_grpc.add_VariableServiceServicer_to_server(servicer, server)
    address = f"{config.host}:{config.port}"
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as e:
        raise OSError(f"cannot listen on {address}: {e}") from None
    if port == 0:
        raise OSError(f"cannot listen on {address}: address in use or unavailable")
    log.info("varstore listening on %s:%d (pid %d)", config.host, port, os.getpid())
    return Server(server, port, store, servicer, checkpoints)
