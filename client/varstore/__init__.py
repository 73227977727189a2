"""varstore: a parameter server for TensorFlow-style training jobs.

``import varstore as vs``; ``client = vs.connect()`` gives the eager API (``get_variable``,
``Variable``, scopes, ``pull``/``push``, checkpoints). ``import varstore.v1 as tf`` gives
TF 1.x graph mode over the server.

Names are loaded on first use (PEP 562), so ``import varstore.server`` or
``import varstore.common`` does not load the eager client.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING, Any

# Run from a checkout with client/, common/ and server/ on sys.path (as the tests do), the
# package's parts live in three folders; an installed varstore has them in one.
__path__ = pkgutil.extend_path(__path__, __name__)

from varstore.common import __version__  # noqa: E402 - needs the extended __path__

if TYPE_CHECKING:
    from varstore import errors, train
    from varstore.client import Client, RemoteVariable, VariableInfo
    from varstore.cluster import connect
    from varstore.common.dtypes import (
        DType,
        as_dtype,
        bfloat16,
        bool_,
        complex64,
        complex128,
        double,
        float16,
        float32,
        float64,
        half,
        int8,
        int16,
        int32,
        int64,
        string,
        uint8,
        uint16,
        uint32,
        uint64,
    )
    from varstore.initializers import (
        constant_initializer,
        glorot_uniform_initializer,
        ones_initializer,
        random_normal_initializer,
        random_uniform_initializer,
        truncated_normal_initializer,
        zeros_initializer,
    )
    from varstore.scopes import AUTO_REUSE, VariableScope
    from varstore.transport import TLSConfig

_DTYPES = ("DType", "as_dtype", "bfloat16", "bool_", "complex64", "complex128", "double",
           "float16", "float32", "float64", "half", "int8", "int16", "int32", "int64", "string",
           "uint8", "uint16", "uint32", "uint64")
_INITIALIZERS = ("constant_initializer", "glorot_uniform_initializer", "ones_initializer",
                 "random_normal_initializer", "random_uniform_initializer",
                 "truncated_normal_initializer", "zeros_initializer")
# Where each public name lives: the module is imported when the name is first used.
_HOMES: dict[str, str] = {
    **{name: "varstore.common.dtypes" for name in _DTYPES},
    **{name: "varstore.initializers" for name in _INITIALIZERS},
    "Client": "varstore.client", "RemoteVariable": "varstore.client",
    "VariableInfo": "varstore.client", "connect": "varstore.cluster",
    "AUTO_REUSE": "varstore.scopes", "VariableScope": "varstore.scopes",
    "TLSConfig": "varstore.transport",
}
_SUBMODULES = ("errors", "train")

__all__ = sorted([*_HOMES, *_SUBMODULES, "__version__"], key=str.lower)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"varstore.{name}")
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'varstore' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
