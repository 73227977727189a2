"""Redis as users would run it next to a trainer: a local redis-server without persistence."""

from __future__ import annotations

import shutil
import subprocess
import time
from typing import Any

from harness import free_port


class RedisBaseline:
    """A redis-server child process on a free port and a redis-py client; ``None`` from
    :meth:`start` with the reason when the server or the client library is missing."""

    # client: a redis.Redis; Any because redis-py is optional (the bench extra).
    def __init__(self, process: subprocess.Popen[bytes], client: Any) -> None:
        self.process = process
        self.client = client

    @classmethod
    def start(cls) -> tuple[RedisBaseline | None, str]:
        binary = shutil.which("redis-server")
        if binary is None:
            return None, "redis-server is not installed (apt-get install -y redis-server)"
        try:
            import redis
        except ImportError:
            return None, "redis-py is not installed (pip install redis)"
        port = free_port()
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--protected-mode", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=port)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                return cls(process, client), ""
            except redis.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    process.kill()
                    return None, "redis-server did not start"
                time.sleep(0.05)

    def incr(self) -> None:
        """One blocking INCR."""
        self.client.incr("counter")

    def incr_pipelined(self, n: int) -> None:
        """``n`` INCRs in one pipeline (one round trip)."""
        pipe = self.client.pipeline(transaction=False)
        for _ in range(n):
            pipe.incr("counter")
        pipe.execute()

    def set(self, data: bytes) -> None:
        """SET of the payload."""
        self.client.set("payload", data)

    def get(self, n: int) -> None:
        """GET of the payload stored by :meth:`set`."""
        assert len(self.client.get("payload")) == n

    def stop(self) -> None:
        self.client.close()
        self.process.terminate()
        self.process.wait(timeout=30)
