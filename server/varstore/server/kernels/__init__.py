"""The ops a graph may contain, as numpy kernels, in modules by job: variables and their
updates (:mod:`.state`), initializers (:mod:`.initializers`), elementwise math, matmul, casts
and reductions (:mod:`.math`), shape ops (:mod:`.array`) and lookups in partitioned variables
(:mod:`.embedding`). Each module lists its ops in an
explicit ``OPS`` table; :mod:`varstore.server.ops` merges them with the training ops'.

A kernel receives the evaluation context, its node and its input values, and returns its
output (None for ops run for effect). Kernels that update a variable run while the executor
holds that variable's lock. Every kernel charges the arrays it allocates to the request's
memory budget first (``Context.check_alloc``), so a request cannot make the server hold more
than ``--max-memory``. Kernels raise varstore's errors for bad input; the executor turns
numpy's own exceptions into ``InvalidArgumentError``.
"""

from __future__ import annotations

from varstore.server.kernels.base import Context, Kernel, NodeDef, OpDef, _indices

__all__ = ["Context", "Kernel", "NodeDef", "OpDef", "_indices"]
