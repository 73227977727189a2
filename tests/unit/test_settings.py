"""A server's settings are checked when they are given, by flag name, with exact types: a
setting that cannot be honoured never starts a server that fails later."""

from __future__ import annotations

import math
from typing import Any

import pytest

from varstore.server import ServerConfig
from varstore.server.settings import parse_size


@pytest.mark.parametrize("setting, error", [
    ({"keep": -1}, "--keep must be an integer >= 0, got -1"),
    ({"keep": 1.5}, "--keep must be an integer >= 0, got 1.5"),
    ({"keep": True}, "--keep must be an integer >= 0, got True"),
    ({"save_every": math.nan}, "--save-every must be a number of seconds >= 0"),
    ({"save_every": math.inf}, "--save-every must be a number of seconds >= 0"),
    ({"save_every": -5.0}, "--save-every must be a number of seconds >= 0 and at most"),
    ({"save_every": 1e12}, "and at most 3.1536e\\+08, got 1000000000000.0"),
    ({"save_every": "10"}, "--save-every must be a number of seconds"),
    ({"stream_idle_seconds": 0.0}, "--stream-idle-seconds must be a number of seconds > 0"),
    ({"max_memory": -5}, "--max-memory must be an integer >= 0, got -5"),
    ({"max_request_bytes": 0}, "--max-request-bytes must be an integer >= 1, got 0"),
    ({"port": 70110}, "--port must be an integer in \\[0, 65535\\], got 70110"),
    ({"metrics_port": -1}, "--metrics-port must be an integer in \\[0, 65535\\]"),
    ({"max_workers": 2}, "--max-workers must be an integer in \\[3, 10000\\], got 2"),
    ({"restore": ["a"]}, "--restore must be 'latest' or a checkpoint prefix, got \\['a'\\]"),
    ({"checkpoint_dir": 5}, "--checkpoint-dir must be a path, got 5"),
    ({"token_file": ["t"]}, "--token-file must be a path"),
    ({"save_on_exit": "no"}, "save_on_exit must be true or false, got 'no'"),
    ({"host": ""}, "--host must be an address"),
    ({"cluster": ("a:1", 2)}, "--cluster must be a list of addresses"),
    ({"cluster": ("a:1", "b:1"), "task_index": 2}, "--task-index 2 is not in \\[0, 2\\)"),
])
def test_settings_that_cannot_be_honoured_are_refused(setting: dict[str, Any],
                                                       error: str) -> None:
    with pytest.raises(ValueError, match=error):
        ServerConfig(**setting)


def test_the_defaults_and_edges_are_accepted() -> None:
    assert ServerConfig().keep == 5
    edges = ServerConfig(port=0, keep=0, save_every=0, max_memory=0, metrics_port=65535,
                         max_workers=3, cluster=("a:1", "b:1"), task_index=1)
    assert (edges.port, edges.save_every, edges.task_index) == (0, 0, 1)


@pytest.mark.parametrize("text, size", [
    ("512", 512), ("64M", 64 << 20), ("64mb", 64 << 20), ("1.5G", 3 << 29), ("0", 0),
    (" 2K ", 2048), ("1T", 1 << 40),
])
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["5Q", "", "-5", "-1G", "nan", "infG", "1e400", "G", "0x10"])
def test_bad_sizes_say_what_a_size_is(text: str) -> None:
    with pytest.raises(ValueError, match="is not a size: a number of bytes >= 0 with an "
                                         "optional K, M, G or T suffix"):
        parse_size(text)
