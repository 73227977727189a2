"""The transport floor and the machine's limit, each served by a process of its own.

- A bare gRPC server with a generic handler and identity serializers: raw bytes in and out,
  no protobuf and no Python work beyond handing over a prebuilt payload.
- A raw TCP server: ``sendall``/``recv_into`` of the same payload over loopback.
"""

from __future__ import annotations

import multiprocessing as mp
import socket
import struct
from collections.abc import Iterator
from concurrent import futures
from multiprocessing.connection import Connection
from typing import Any

import grpc
from harness import MB, payload

SERVICE = "floor.Floor"
MAX_MESSAGE = (1 << 31) - 1
# Same message limits on both sides as varstore's client; nothing else is tuned.
OPTIONS = [("grpc.max_receive_message_length", MAX_MESSAGE),
           ("grpc.max_send_message_length", MAX_MESSAGE)]
_HEADER = struct.Struct("<cQ")


class _Payloads:
    """Payloads by size, built once so the servers only send."""

    def __init__(self) -> None:
        self._whole: dict[int, bytes] = {}
        self._chunks: dict[int, list[bytes]] = {}

    def whole(self, n: int) -> bytes:
        if n not in self._whole:
            self._whole[n] = payload(n)
        return self._whole[n]

    def chunks(self, n: int) -> list[bytes]:
        if n not in self._chunks:
            data = memoryview(self.whole(n))
            self._chunks[n] = [bytes(data[i:i + MB]) for i in range(0, n, MB)]
        return self._chunks[n]


def _grpc_server(conn: Connection) -> None:
    data = _Payloads()

    def size(request: bytes) -> int:
        return int.from_bytes(request, "little")

    def pull_stream(request: bytes, context: Any) -> Iterator[bytes]:
        yield from data.chunks(size(request))

    def push_stream(requests: Iterator[bytes], context: Any) -> bytes:
        return sum(len(r) for r in requests).to_bytes(8, "little")

    handlers: dict[str, grpc.RpcMethodHandler[bytes, bytes]] = {
        "Echo": grpc.unary_unary_rpc_method_handler(lambda r, c: r),
        "Pull": grpc.unary_unary_rpc_method_handler(lambda r, c: data.whole(size(r))),
        "Push": grpc.unary_unary_rpc_method_handler(
            lambda r, c: len(r).to_bytes(8, "little")),
        "PullStream": grpc.unary_stream_rpc_method_handler(pull_stream),
        "PushStream": grpc.stream_unary_rpc_method_handler(push_stream),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=OPTIONS)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    conn.send(port)
    conn.recv()
    server.stop(None)


def _tcp_server(conn: Connection) -> None:
    data = _Payloads()
    listener = socket.create_server(("127.0.0.1", 0))
    conn.send(listener.getsockname()[1])
    sock, _ = listener.accept()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray()
    while True:
        header = _recv_exactly(sock, memoryview(bytearray(_HEADER.size)))
        if header is None:
            return
        op, n = _HEADER.unpack(header)
        if op == b"P":
            sock.sendall(data.whole(n))
        else:
            if len(buf) < n:
                buf = bytearray(n)
            _recv_exactly(sock, memoryview(buf)[:n])
            sock.sendall(b"k")


def _recv_exactly(sock: socket.socket, view: memoryview) -> memoryview | None:
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if n == 0:
            return None
        got += n
    return view


class _Child:
    """A server function running in a spawned process; reports its port through a pipe."""

    def __init__(self, target: Any) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(target=target, args=(child,), daemon=True)
        self.process.start()
        self.port: int = self._conn.recv()

    def stop(self) -> None:
        try:
            self._conn.send(None)
        except OSError:
            pass
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


class GrpcFloor:
    """Client of the bare gRPC server (started in its own process)."""

    def __init__(self) -> None:
        self._child = _Child(_grpc_server)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self._child.port}", options=OPTIONS)
        grpc.channel_ready_future(self.channel).result(timeout=30)
        method = f"/{SERVICE}/"
        # No serializers: requests and responses are the raw bytes.
        self._echo: grpc.UnaryUnaryMultiCallable[bytes, bytes] = \
            self.channel.unary_unary(method + "Echo")
        self._pull: grpc.UnaryUnaryMultiCallable[bytes, bytes] = \
            self.channel.unary_unary(method + "Pull")
        self._push: grpc.UnaryUnaryMultiCallable[bytes, bytes] = \
            self.channel.unary_unary(method + "Push")
        self._pull_stream: grpc.UnaryStreamMultiCallable[bytes, bytes] = \
            self.channel.unary_stream(method + "PullStream")
        self._push_stream: grpc.StreamUnaryMultiCallable[bytes, bytes] = \
            self.channel.stream_unary(method + "PushStream")
        self._echo_payload = b"x" * 16

    def echo(self) -> None:
        """One 16-byte unary round trip."""
        self._echo(self._echo_payload)

    def pull(self, n: int) -> None:
        """``n`` bytes from the server as one message."""
        assert len(self._pull(n.to_bytes(8, "little"))) == n

    def push(self, data: bytes) -> None:
        """``data`` to the server as one message."""
        self._push(data)

    def pull_stream(self, n: int) -> None:
        """``n`` bytes from the server as a stream of 1 MB messages."""
        assert sum(len(c) for c in self._pull_stream(n.to_bytes(8, "little"))) == n

    def push_stream(self, chunks: list[bytes]) -> None:
        """Prebuilt 1 MB chunks to the server as one stream."""
        self._push_stream(iter(chunks))

    def close(self) -> None:
        self.channel.close()
        self._child.stop()


class TcpFloor:
    """Client of the raw loopback TCP server (started in its own process)."""

    def __init__(self) -> None:
        self._child = _Child(_tcp_server)
        self.sock = socket.create_connection(("127.0.0.1", self._child.port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = bytearray()

    def pull(self, n: int) -> None:
        """``n`` bytes from the server into a preallocated buffer."""
        if len(self._buf) < n:
            self._buf = bytearray(n)
        self.sock.sendall(_HEADER.pack(b"P", n))
        _recv_exactly(self.sock, memoryview(self._buf)[:n])

    def push(self, data: bytes) -> None:
        """``data`` to the server, which acknowledges once it has all of it."""
        self.sock.sendall(_HEADER.pack(b"U", len(data)))
        self.sock.sendall(data)
        _recv_exactly(self.sock, memoryview(bytearray(1)))

    def close(self) -> None:
        self.sock.close()
        self._child.stop()
