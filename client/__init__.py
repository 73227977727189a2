"""varstore: a parameter server for TensorFlow-style training jobs.

``import varstore as vs``; ``client = vs.connect()`` gives the eager API (``get_variable``,
``Variable``, scopes, ``pull``/``push``, checkpoints). ``import varstore.v1 as tf`` gives
TF 1.x graph mode over the server.
"""

from varstore import errors, train
from varstore.client import Client, RemoteVariable, VariableInfo, connect
from varstore.dtypes import (
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

__version__ = "0.1.0"

__all__ = [
    "AUTO_REUSE", "Client", "DType", "RemoteVariable", "TLSConfig", "VariableInfo",
    "VariableScope", "as_dtype", "bfloat16", "bool_", "complex64", "complex128", "connect",
    "constant_initializer", "double", "errors", "float16", "float32", "float64",
    "glorot_uniform_initializer", "half", "int8", "int16", "int32", "int64", "ones_initializer",
    "random_normal_initializer", "random_uniform_initializer", "string", "train",
    "truncated_normal_initializer", "uint8", "uint16", "uint32", "uint64", "zeros_initializer",
]
