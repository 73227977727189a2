"""A client given no address takes it from $VARSTORE_ADDRESS (else TF_CONFIG's first ps task);
when that address is bad or unreachable, every client path says the address came from that
variable, which is where it is fixed: connecting, mid-session, and the command line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import varstore as vs
import varstore.aio
import varstore.v1 as tf
from varstore.errors import InvalidArgumentError, UnavailableError
from varstore.server import ServerConfig, create_server

FROM_VARIABLE = "(from $VARSTORE_ADDRESS)"


@pytest.fixture
def closed_address() -> str:
    """A local address that nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


async def _aio_connect() -> Any:
    return await varstore.aio.connect()


def _connectors() -> list[Callable[[], Any]]:
    return [vs.connect, lambda: tf.Session(), _aio_connect]


async def _call(connector: Callable[[], Any]) -> Any:
    result = connector()
    return await result if isinstance(result, Awaitable) else result


@pytest.mark.parametrize("connector", _connectors(), ids=["connect", "Session", "aio"])
async def test_an_unreachable_address_from_the_variable_is_said_to_come_from_it(
        connector: Callable[[], Any], closed_address: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VARSTORE_ADDRESS", closed_address)
    with pytest.raises(UnavailableError) as caught:
        await _call(connector)
    assert str(caught.value).startswith(
        f"no varstore server at {closed_address} {FROM_VARIABLE}: connection refused")


@pytest.mark.parametrize("connector", _connectors(), ids=["connect", "Session", "aio"])
async def test_a_malformed_address_from_the_variable_is_said_to_come_from_it(
        connector: Callable[[], Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VARSTORE_ADDRESS", "7011")
    with pytest.raises(InvalidArgumentError) as caught:
        await _call(connector)
    assert str(caught.value) == (f"malformed server address '7011' {FROM_VARIABLE}: expected "
                                 "HOST:PORT (did you mean localhost:7011?)")


async def test_tf_config_is_named_too(closed_address: str,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VARSTORE_ADDRESS", raising=False)
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"ps": [closed_address]}}))
    for connector in _connectors():
        with pytest.raises(UnavailableError, match=(
                f"^no varstore server at {closed_address} \\(from TF_CONFIG's cluster.ps\\[0\\]\\)"
                ": connection refused")):
            await _call(connector)


async def test_a_server_gone_mid_session_names_the_variable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = create_server(ServerConfig(host="127.0.0.1", port=0, checkpoint_dir=tmp_path))
    server.start()
    address = f"127.0.0.1:{server.port}"
    monkeypatch.setenv("VARSTORE_ADDRESS", address)
    client, aclient = vs.connect(), await varstore.aio.connect()
    try:
        server.stop(grace=0)
        gone = f"^the varstore server at {address} \\(from \\$VARSTORE_ADDRESS\\) is not reachable"
        with pytest.raises(UnavailableError, match=gone):
            client.Variable(1.0, name="v")
        with pytest.raises(UnavailableError, match=gone):
            await aclient.Variable(1.0, name="v")
    finally:
        client.close()
        await aclient.close()


def test_the_command_line_names_the_variable(closed_address: str) -> None:
    env = {**os.environ, "VARSTORE_ADDRESS": closed_address}
    env.pop("TF_CONFIG", None)
    done = subprocess.run([sys.executable, "-m", "varstore.cli", "ls"], capture_output=True,
                          text=True, timeout=120, env=env)
    assert done.returncode == 1
    assert done.stderr.startswith(f"varstore ls: UnavailableError: no varstore server at "
                                  f"{closed_address} {FROM_VARIABLE}: connection refused")
