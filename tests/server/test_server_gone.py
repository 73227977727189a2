"""What every client path says when its server goes away mid-session (it stopped): which
address, that nothing listens there now and what to check, gRPC's own words kept short at the
end, never gRPC's raw debug text."""

from __future__ import annotations

from pathlib import Path

import pytest

import varstore as vs
import varstore.aio
import varstore.v1 as tf
from varstore.errors import UnavailableError
from varstore.server import ServerConfig, create_server


def _gone(address: str, error: BaseException) -> None:
    """``error`` says in the user's terms that the server at ``address`` stopped."""
    assert isinstance(error, UnavailableError)
    assert str(error).startswith(
        f"the varstore server at {address} is not reachable: connection refused, so nothing "
        "listens there now (the server stopped or crashed, or the address is wrong); check "
        "that `varstore serve` runs there and its log [gRPC: ")
    assert "last error" not in str(error) and "ipv4:" not in str(error)


async def test_every_client_says_its_server_went_away(tmp_path: Path) -> None:
    server = create_server(ServerConfig(host="127.0.0.1", port=0, checkpoint_dir=tmp_path))
    server.start()
    address = f"127.0.0.1:{server.port}"
    client = vs.connect(address)
    aclient = await varstore.aio.connect(address)
    with tf.Graph().as_default():
        x = tf.get_variable("x", [], initializer=tf.zeros_initializer())
        step = tf.assign_add(x, 1.0)
        session = tf.Session(address)
        session.run(tf.global_variables_initializer())
        v = client.get_variable("x", [])
        av = await aclient.get_variable("x", [])
        server.stop(grace=0)
        try:
            for call in (v.numpy, lambda: v.assign(2.0), client.list_variables,
                         lambda: client.save("model.ckpt"), lambda: session.run(step)):
                with pytest.raises(UnavailableError) as caught:
                    call()
                _gone(address, caught.value)
            for acall in (av.numpy, lambda: av.assign(2.0), aclient.list_variables):
                with pytest.raises(UnavailableError) as caught:
                    await acall()
                _gone(address, caught.value)
        finally:
            session.close()
            client.close()
            await aclient.close()
