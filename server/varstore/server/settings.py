"""The checks of a server's settings, made when they are given (flags, config file, or a
``ServerConfig`` built in code), not when they are first used: a ``--keep -1`` found only by
the exit save lost every change, and a ``--save-every nan`` silently never saved.

Every check uses exact types (``bool`` is no integer here) and gives the flag's name.
"""

from __future__ import annotations

import math
import os
from typing import Any

# Integer settings: (least, greatest or None).
_INTEGERS: dict[str, tuple[int, int | None]] = {
    "port": (0, 65535), "keep": (0, None), "max_memory": (0, None),
    "max_request_bytes": (1, None), "max_workers": (3, 10_000), "task_index": (0, None),
}
_OPTIONAL_INTEGERS: dict[str, tuple[int, int | None]] = {"metrics_port": (0, 65535)}
# Durations in seconds: (least, whether the least itself is allowed).
_SECONDS: dict[str, tuple[float, bool]] = {
    "save_every": (0.0, True),  # 0: no timer
    "stream_idle_seconds": (0.0, False),
}
# Ten years: a longer period is a typo, and a timer's deadline must fit the platform's time_t.
_MAX_SECONDS = 10 * 365 * 24 * 3600.0
_PATHS = ("checkpoint_dir",)
_OPTIONAL_PATHS = ("tls_cert", "tls_key", "tls_client_ca", "token_file", "local_socket_dir")
_BOOLS = ("allow_insecure_remote", "save_on_exit")


def flag(name: str) -> str:
    """The ``varstore serve`` flag of setting ``name`` (``keep`` in a config file)."""
    return "--" + name.replace("_", "-")


def check_settings(values: dict[str, Any]) -> None:
    """Raises ``ValueError`` naming the flag for a setting of the wrong type or out of range:
    integers within their bounds, durations finite and positive (``save_every`` 0 is "no
    timer"), paths as strings or paths, flags as booleans, ``host`` a non-empty string,
    ``restore`` a string, ``cluster`` a list of addresses with ``task_index`` in it."""
    for name, (least, greatest) in _INTEGERS.items():
        _integer(name, values[name], least, greatest)
    for name, (least, greatest) in _OPTIONAL_INTEGERS.items():
        if values[name] is not None:
            _integer(name, values[name], least, greatest)
    for name, (shortest, inclusive) in _SECONDS.items():
        value = values[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or value > _MAX_SECONDS \
                or value < shortest or (value == shortest and not inclusive):
            bound = f">= {shortest:g}" if inclusive else f"> {shortest:g}"
            raise ValueError(f"{flag(name)} must be a number of seconds {bound} and at most "
                             f"{_MAX_SECONDS:g}, got {value!r}"[:300])
    for name in _PATHS:
        if not isinstance(values[name], (str, os.PathLike)):
            raise ValueError(f"{flag(name)} must be a path, got {values[name]!r}"[:300])
    for name in _OPTIONAL_PATHS:
        if values[name] is not None and not isinstance(values[name], (str, os.PathLike)):
            raise ValueError(f"{flag(name)} must be a path, got {values[name]!r}"[:300])
    for name in _BOOLS:
        if not isinstance(values[name], bool):
            raise ValueError(f"{name} must be true or false, got {values[name]!r}"[:300])
    if not isinstance(values["host"], str) or not values["host"]:
        raise ValueError(f"--host must be an address, got {values['host']!r}"[:300])
    if values["restore"] is not None and not isinstance(values["restore"], str):
        raise ValueError(f"--restore must be 'latest' or a checkpoint prefix, got "
                         f"{values['restore']!r}"[:300])
    cluster = values["cluster"]
    if not isinstance(cluster, (tuple, list)) or not all(isinstance(a, str) for a in cluster):
        raise ValueError(f"--cluster must be a list of addresses, got {cluster!r}"[:300])
    if cluster and values["task_index"] >= len(cluster):
        raise ValueError(f"--task-index {values['task_index']} is not in [0, {len(cluster)})")


def _integer(name: str, value: Any, least: int, greatest: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least \
            or (greatest is not None and value > greatest):
        bounds = f"in [{least}, {greatest}]" if greatest is not None else f">= {least}"
        raise ValueError(f"{flag(name)} must be an integer {bounds}, got {value!r}"[:300])


def parse_size(text: str) -> int:
    """A byte count with an optional suffix (``512``, ``64M``, ``1.5G``; K, M, G, T are
    powers of 1024), exact for whole numbers.

    Raises ``ValueError`` for anything else (negative, not finite, not a number).
    """
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    body = text.strip().upper().removesuffix("B")
    scale = units.get(body[-1:], 1)
    digits = body[:-1] if body[-1:] in units else body
    try:
        number = int(digits) * scale if digits.isdigit() else float(digits) * scale
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{text[:40]!r} is not a size: a number of bytes >= 0 with an "
                         "optional K, M, G or T suffix (e.g. 64M)")
    return int(number)
