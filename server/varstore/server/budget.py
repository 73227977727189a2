"""The server's memory budget: what ``--max-memory`` and ``--max-request-bytes`` bound.

One :class:`MemoryBudget`, built by ``create_server``, counts every byte the server holds for
clients: the values of its variables (for as long as they exist) and, for each call in flight,
its request buffers, decoded tensors, the intermediate results of its graph (a request's
nodes' outputs all live until it ends), undo copies, fetched copies and reply encodings. Each
of these is charged *before* it is allocated, through the call's :class:`Lease`, and a charge
that would pass the limit is refused with ``ResourceExhaustedError`` naming what was refused;
a lease gives everything back when its call ends, however it ends.

``--max-request-bytes`` bounds the request bytes of all calls in flight together, so that many
clients each sending a request just under the limit cannot add up to many times it.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import numpy as np

from varstore.common.codec import STRING_ELEMENT_BYTES, check_shape
from varstore.common.dtypes import DType
from varstore.common.errors import ResourceExhaustedError


def array_bytes(shape: Sequence[int], dtype: DType) -> int:
    """The memory an array of ``shape`` and ``dtype`` takes, computed exactly; a string
    element counts its pointer and its bytes object's header (its bytes are charged apart)."""
    return math.prod(shape) * (STRING_ELEMENT_BYTES if dtype.is_string else dtype.itemsize)


def reply_bytes(values: Sequence[object], streamed: bool) -> int:
    """Memory that encoding ``values`` in a reply takes: strings are joined into one buffer
    (twice: lengths and bytes, then both); a numeric tensor streams from its own memory, and
    goes into a unary reply as a copy that is serialized as another."""
    total = 0
    for value in values:
        if not isinstance(value, np.ndarray):
            continue
        if value.dtype == object:
            total += 2 * (8 * value.size + sum(len(x) for x in value.flat))
        elif not streamed:
            total += 2 * value.nbytes
    return total


class MemoryBudget:
    """Bytes held against a limit (0: none), and request bytes in flight against another."""

    def __init__(self, limit: int = 0, request_limit: int = 0) -> None:
        self.limit = limit
        self.request_limit = request_limit
        self._used = 0
        self._requests = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        """Bytes charged and not released yet."""
        return self._used

    @property
    def requests(self) -> int:
        """Request bytes of the calls in flight."""
        return self._requests

    def charge(self, nbytes: int, what: str, request: bool = False) -> None:
        """Counts ``nbytes`` more, ``what`` naming them for the refusal; with ``request``, they
        are request bytes and also count against the request limit.

        Raises ``ResourceExhaustedError`` (counting nothing) when a limit would be passed.
        """
        with self._lock:
            if request and self.request_limit and self._requests + nbytes > self.request_limit:
                raise ResourceExhaustedError(
                    f"{what} ({nbytes} bytes) would take the requests in flight past the "
                    f"server's limit of {self.request_limit} bytes ({self._requests} in "
                    "flight); try again later")
            if self.limit and self._used + nbytes > self.limit:
                raise ResourceExhaustedError(
                    f"{what} ({nbytes} bytes) would exceed the server's memory limit of "
                    f"{self.limit} bytes ({self._used} in use)")
            self._used += nbytes
            if request:
                self._requests += nbytes

    def release(self, nbytes: int, request: int = 0) -> None:
        """Gives back ``nbytes`` (``request`` of them request bytes)."""
        with self._lock:
            self._used -= nbytes
            self._requests -= request

    def lease(self) -> Lease:
        """A new lease for one call."""
        return Lease(self)


class Lease:
    """What one call holds of a :class:`MemoryBudget`; :meth:`close` gives it all back.

    A lease may be closed from another thread than the call's (gRPC runs a call's
    termination callbacks on its own threads): charges made after that are refused.
    """

    __slots__ = ("budget", "_held", "_requests", "_closed", "_lock")

    def __init__(self, budget: MemoryBudget) -> None:
        self.budget = budget
        self._held = 0
        self._requests = 0
        self._closed = False
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        """Bytes this lease holds."""
        return self._held

    def charge(self, nbytes: int, what: str, request: bool = False) -> None:
        """Charges ``nbytes`` to the budget for this call (see :meth:`MemoryBudget.charge`);
        raises ``ResourceExhaustedError`` when a limit would be passed or the call ended."""
        if nbytes <= 0:
            return
        with self._lock:
            if self._closed:
                raise ResourceExhaustedError(f"{what}: the call has ended")
            self.budget.charge(nbytes, what, request)
            self._held += nbytes
            if request:
                self._requests += nbytes

    def charge_request(self, nbytes: int, what: str) -> None:
        """Charges ``nbytes`` of request buffers (memory and the request limit)."""
        self.charge(nbytes, what, request=True)

    def charge_array(self, shape: Sequence[int], dtype: DType, what: str) -> None:
        """Charges an array of ``shape`` and ``dtype`` (:func:`array_bytes`) before it is
        allocated; ``what`` says what it is for (e.g. ``"stack (node 3)"``)."""
        self.charge(array_bytes(shape, dtype),
                    f"{what}: a tensor of shape {list(shape)} and dtype {dtype.name}")

    def close(self) -> None:
        """Gives back everything the lease holds; later charges are refused."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self.budget.release(self._held, self._requests)
                self._held = self._requests = 0


def check_alloc(shape: tuple[int, ...], dtype: DType, limit: int, what: str = "") -> None:
    """Raises ``ResourceExhaustedError`` when a tensor of ``shape`` and ``dtype`` would take
    more than ``limit`` bytes (the message starts with ``what``, e.g. the node), and
    ``InvalidArgumentError`` for a shape no array can have (:func:`check_shape`)."""
    check_shape(shape, dtype, what=f"{what}{': ' if what else ''}shape")
    size = math.prod(shape) * max(dtype.itemsize, 1)
    if size > limit:
        raise ResourceExhaustedError(
            f"{what}{': ' if what else ''}a tensor of shape {list(shape)} and dtype "
            f"{dtype.name} ({size} bytes) exceeds the server's limit of {limit} bytes")
