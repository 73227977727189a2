"""A raw HTTP/2 client for tests of what gRPC clients never do: calls whose request message
comes partly, then never."""

from __future__ import annotations

import contextlib
import socket
import struct
import time

DATA, HEADERS, RST_STREAM, SETTINGS = 0, 1, 3, 4
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    """One HTTP/2 frame."""
    return (struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) +
            struct.pack(">I", stream) + payload)


def header(name: str, value: str) -> bytes:
    """An HPACK literal header field, not indexed (names and values under 127 bytes)."""
    assert len(name) < 127 and len(value) < 127
    return b"\x00" + bytes([len(name)]) + name.encode() + bytes([len(value)]) + value.encode()


class HalfSentCalls:
    """One connection to ``127.0.0.1:port`` with ``count`` calls of ``method``, each sending
    3 bytes of the 1000 its request message announces, then nothing (with ``token``: as a
    bearer token in its metadata)."""

    def __init__(self, port: int, count: int,
                 method: str = "/varstore.v1.VariableService/ListVariables",
                 token: str | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(SETTINGS, 0, 0))
        self._buffer = b""
        self.ended: set[int] = set()
        self.streams = [1 + 2 * k for k in range(count)]
        fields = [(":method", "POST"), (":scheme", "http"), (":path", method),
                  (":authority", f"127.0.0.1:{port}"), ("content-type", "application/grpc"),
                  ("te", "trailers")]
        if token is not None:
            fields.append(("authorization", f"Bearer {token}"))
        headers = b"".join(header(k, v) for k, v in fields)
        for stream in self.streams:
            self.sock.sendall(frame(HEADERS, END_HEADERS, stream, headers))
            self.sock.sendall(frame(DATA, 0, stream, b"\x00" + struct.pack(">I", 1000) +
                                    b"\x0a\x01a"))

    def __enter__(self) -> HalfSentCalls:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the connection."""
        self.sock.close()

    def wait_ended(self, count: int, timeout: float) -> set[int]:
        """Reads what the server sends until ``count`` calls were ended by it (reset, or
        answered with trailers) or ``timeout`` seconds passed; returns the ended calls."""
        deadline = time.monotonic() + timeout
        while len(self.ended) < count and time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                break
            if not data:
                break
            self._buffer += data
            self._read_frames()
        return set(self.ended)

    def _read_frames(self) -> None:
        while len(self._buffer) >= 9:
            length = int.from_bytes(self._buffer[:3], "big")
            if len(self._buffer) < 9 + length:
                return
            kind, flags = self._buffer[3], self._buffer[4]
            stream = int.from_bytes(self._buffer[5:9], "big") & 0x7FFFFFFF
            self._buffer = self._buffer[9 + length:]
            if kind == SETTINGS and not flags & ACK:
                with contextlib.suppress(OSError):
                    self.sock.sendall(frame(SETTINGS, ACK, 0))
            elif kind == RST_STREAM or (kind == HEADERS and flags & END_STREAM):
                self.ended.add(stream)
