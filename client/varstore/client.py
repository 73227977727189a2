"""The eager client: ``vs.connect()`` and the variable handles it returns.

Every call is one round trip. Variables follow TF 1.x's naming and reuse rules within a
client (:mod:`varstore.scopes`) and are shared with other clients by full name on the server.
"""

from __future__ import annotations

import contextlib
import operator
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from varstore import initializers, train
from varstore.common import codec, dtypes, names
from varstore.common.dtypes import DType
from varstore.common.errors import InvalidArgumentError, NotFoundError, OpError
from varstore.handles import (
    RemoteVariable,
    Reply,
    Steps,
    VariableHandle,
    name_list,
    pull_steps,
    push_steps,
    text,
    undone_on_failure,
)
from varstore.proto import varstore_pb2 as pb
from varstore.proto import varstore_pb2_grpc as pb_grpc
from varstore.request import RequestBuilder, checkpoint_entries
from varstore.scopes import EagerScopes, Naming, check_initializer_dtype, refuse_eager
from varstore.transport import Transport, is_read_only, resolve_address

# Called with varstore's chunk codec (codec.serialize_chunk/parse_chunk) instead of the
# generated stub's protobuf one: same bytes on the wire, fewer copies.
RUN_STREAM_METHOD = "/varstore.v1.VariableService/RunStream"


@dataclass(frozen=True)
class VariableInfo:
    """What the server holds for one variable; ``save_slice``, for a part of a partitioned
    variable, where it lies in the full variable (which checkpoints store as one tensor)."""

    name: str
    dtype: DType
    shape: tuple[int, ...]
    trainable: bool
    initialized: bool
    version: int
    created_by: str
    initializer: str
    nbytes: int
    save_slice: pb.SaveSlice | None = None

    @classmethod
    def from_proto(cls, info: pb.VariableInfo) -> VariableInfo:
        """Converts the wire message."""
        return cls(info.name, dtypes.from_enum(info.dtype), tuple(info.shape.dim),
                   info.trainable, info.initialized, info.version, info.created_by,
                   info.initializer_desc, info.nbytes,
                   info.save_slice if info.HasField("save_slice") else None)


class ClientBase(EagerScopes):
    """What the blocking :class:`Client` and ``varstore.aio.Client`` share: the naming state,
    scopes (:class:`varstore.scopes.EagerScopes`), and every method made of Run requests,
    written once as :data:`Steps` that the subclass's ``_drive`` runs (blocking, or as a
    coroutine)."""

    handle_type: type[VariableHandle] = VariableHandle  # the subclass's RemoteVariable

    def __init__(self) -> None:
        self.naming = Naming()
        self._deferred = False

    def _drive(self, steps: Steps) -> Any:
        """Runs ``steps``, sending each request and feeding back its reply or error."""
        raise NotImplementedError

    # --- variables ------------------------------------------------------------------------

    def _handle(self, info: pb.VariableInfo) -> VariableHandle:
        return self.handle_type(self, info.name, dtypes.from_enum(info.dtype),
                                tuple(info.shape.dim), info.trainable)

    def _variable_steps(self, initial_value: Any, name: str | None, dtype: Any,
                        trainable: bool) -> Steps:
        """``Variable``: takes the name, converts ``initial_value`` now (a failure leaves the
        name used, as TF's); the steps create the variable, or give the name back."""
        if initial_value is None:
            raise ValueError("initial_value must be specified.")
        full, give_back = self.naming.variable_name(name)
        if callable(initial_value):
            initial_value = initial_value()
        dtype = dtypes.infer(initial_value) if dtype is None else dtypes.as_dtype(dtype)
        value = dtypes.convert(initial_value, dtype)
        return undone_on_failure(self._create_steps(
            full, dtype, value.shape, trainable, lambda b: b.const(value, dtype), "Variable",
            "initial_value"), give_back)

    def _get_variable_steps(self, name: str, shape: Any, dtype: Any, initializer: Any,
                            trainable: bool, partitioner: Any = None) -> Steps:
        scope = self.naming.var_scope
        refuse_eager("get_variable", scope)
        partitioner = partitioner if partitioner is not None else scope.partitioner
        if partitioner is not None and not (shape is not None and len(shape) == 0):
            from varstore import partitioned as p  # as TF: a scalar is never partitioned
            return (yield from p.get_steps(self, name, shape, dtype, initializer, trainable,
                                           partitioner))
        full = self.naming.full_name(name)
        init = initializer if initializer is not None else scope.initializer
        value = None
        if init is not None and not isinstance(init, initializers.Initializer | type):
            # A value initializer keeps its own dtype (TF's convert_to_tensor), never cast.
            value_dtype = dtypes.infer(init)
            if dtype is not None and initializer is not None:
                check_initializer_dtype(value_dtype, dtypes.as_dtype(dtype))
            value = dtypes.to_numpy(init, value_dtype)
            dtype = value_dtype
            if shape is not None:
                raise ValueError("If initializer is a constant, do not specify shape.")
        dtype = dtypes.as_dtype(dtype or scope.dtype or dtypes.float32)
        shape = None if shape is None else tuple(operator.index(d) for d in shape)
        # Naming asks for variables it does not know only under reuse: look on the server first.
        found = None
        if full not in self.naming.shared and scope.reuse:
            found = yield from self._find_steps(full)
        creation: list[Steps] = []

        def create(full: str) -> VariableHandle:
            names.check_scope_name(full, at_root=True)
            value_shape = value.shape if value is not None else shape
            if value_shape is None:
                raise ValueError(f"Variable {full} did not get an initializer, so its `shape` "
                                 f"argument must be specified.")
            if value is not None:
                build: Callable[[RequestBuilder], int] = lambda b: b.const(value, dtype)  # noqa: E731
                description = "initial_value"
            else:
                init_obj = initializers.resolve(init, dtype)
                init_obj.validate(value_shape, dtype)
                build = lambda b: init_obj.build(b, value_shape, dtype)  # noqa: E731
                description = init_obj.describe()
            creation.append(self._create_steps(full, dtype, value_shape, trainable, build,
                                               "get_variable", description))
            return self.handle_type(self, full, dtype, tuple(value_shape), trainable)

        var = self.naming.get_variable(
            full, shape if value is None else None,
            dtype if dtype != dtypes.float32 or shape is not None else None,
            create, find_elsewhere=lambda _: found, describe=lambda v: (v.shape, v.dtype))
        if creation:
            try:
                created = yield from creation[0]
            except BaseException:
                self.naming.shared.pop(full, None)
                raise
            self.naming.shared[full] = created
            return created
        return var

    def _create_steps(self, full: str, dtype: DType, shape: Sequence[int], trainable: bool,
                      initializer: Callable[[RequestBuilder], int], created_by: str,
                      description: str) -> Steps:
        """Creates ``full`` initialized (uninitialized when deferred), or binds to it."""
        b = RequestBuilder()
        b.variable(full, dtype, shape, trainable,
                   initializer=None if self._deferred else initializer(b),
                   created_by=created_by, initializer_desc=description)
        _, infos = yield b, 0
        var = self._handle(infos[0])
        var._initializer = initializer
        return var

    @contextlib.contextmanager
    def deferred_initialization(self) -> Iterator[None]:
        """Inside, ``Variable`` and ``get_variable`` create missing variables uninitialized
        on the server (and bind to existing ones as always).

        Build the model inside it in chief and workers alike; then the chief calls
        :meth:`initialize_or_restore` and workers :meth:`wait_until_ready`, so no worker
        trains on initial values that a checkpoint is about to replace.
        """
        previous, self._deferred = self._deferred, True
        try:
            yield
        finally:
            self._deferred = previous

    def _find_steps(self, full: str) -> Steps:
        """The server's variable ``full``, or None when it has none."""
        b = RequestBuilder()
        b.variable(full, dtypes.float32, (), bind_only=True)
        try:
            _, infos = yield b, 0
        except NotFoundError:
            return None
        return self._handle(infos[0])


class Client(ClientBase):
    """A connection to a varstore server, with its own TF-style naming state.

    Use as a context manager or call :meth:`close`.
    """

    handle_type = RemoteVariable

    def __init__(self, address: str | None = None, *, token: str | None = None,
                 tls: Any = None, timeout: float | None = None) -> None:
        super().__init__()
        self.address, source = resolve_address(address)
        self.transport = Transport(self.address, token=token, tls=tls, timeout=timeout,
                                   source=source)
        # The saver of each prefix this client saved (see save()).
        self._savers: dict[str, str] = {}
        self.stub = pb_grpc.VariableServiceStub(self.transport.channel)
        self.run_stream = self.transport.channel.stream_stream(
            RUN_STREAM_METHOD, request_serializer=codec.serialize_chunk,
            response_deserializer=codec.parse_chunk)

    # --- plumbing -------------------------------------------------------------------------

    def close(self) -> None:
        """Closes the channel."""
        self.transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- variables (the same Steps as varstore.aio, run blocking) ---------------------------

    def Variable(self, initial_value: Any, name: str | None = None, dtype: Any = None,  # noqa: N802
                 trainable: bool = True) -> RemoteVariable:
        """Creates a variable with a unique name (``name``, ``name_1``...) initialized to
        ``initial_value``; binds to it without re-initializing if the server has it already.

        Raises ``InvalidArgumentError`` when the server's variable has another shape or dtype.
        """
        return self._drive(self._variable_steps(initial_value, name, dtype, trainable))

    def get_variable(self, name: str, shape: Sequence[int] | None = None, dtype: Any = None,
                     initializer: Any = None, trainable: bool = True, *,
                     partitioner: Any = None) -> Any:
        """Gets or creates the shared variable ``scope/name`` with TF's reuse rules.

        A variable another client created on the server is bound to, never re-initialized.
        A ``partitioner`` (or the scope's) makes parts: see :mod:`varstore.partitioned`.
        Raises ``ValueError`` for the reuse and partitioning mistakes TF rejects (TF's)."""
        return self._drive(self._get_variable_steps(name, shape, dtype, initializer, trainable,
                                                    partitioner))

    def pull(self, variables: Iterable[RemoteVariable]) -> list[np.ndarray]:
        """The values of ``variables``, read in one round trip."""
        return self._drive(pull_steps(variables))

    def push(self, values: Mapping[RemoteVariable, Any]) -> None:
        """Assigns every ``{variable: value}`` in one round trip, atomically per variable."""
        self._drive(push_steps(values))

    def run(self, builder: RequestBuilder, expect_bytes: int = 0) -> Reply:
        """Sends one request; returns the fetched arrays and the variables' infos.

        Requests or expected responses past one message go through the chunked stream.
        """
        stream = max(builder.payload_bytes(), expect_bytes) > codec.STREAM_THRESHOLD
        request, payloads = builder.build(stream)
        if not stream:
            response = self.transport.call(self.stub.Run, request)
            values = [codec.tensor_from_proto(t) for t in response.values]
            return values, list(response.variables)

        def pull(**options: Any) -> tuple[Any, list[np.ndarray | None]]:
            chunks = codec.split_chunks(pb.RunChunk(request=request), payloads)
            return codec.join_chunks(self.run_stream(chunks, **options), "response", 1 << 62)
        header, arrays = self.transport.invoke(pull, idempotent=is_read_only(request))
        values = [a if a is not None else codec.tensor_from_proto(t)
                  for t, a in zip(header.values, arrays, strict=True)]
        return values, list(header.variables)

    def _drive(self, steps: Steps) -> Any:
        try:
            request = next(steps)
            while True:
                try:
                    reply = self.run(*request)
                except OpError as e:
                    request = steps.throw(e)
                else:
                    request = steps.send(reply)
        except StopIteration as done:
            return done.value

    def delete(self, variables: Iterable[Any] | Any = (), *, scope: str | None = None
               ) -> list[str]:
        """Removes ``variables`` (handles or full names, or one of them) from the server, or
        with ``scope`` every variable at or under it; returns the names removed. This client
        forgets them: ``get_variable`` creates them anew, and their old handles raise
        ``NotFoundError``.

        Raises ``NotFoundError`` (nothing removed) when a named variable does not exist,
        ``InvalidArgumentError`` unless exactly one of ``variables`` and ``scope`` is given.
        """
        names = name_list(variables, "delete() argument 'variables'")
        if bool(names) == (scope is not None):
            raise InvalidArgumentError("delete takes variables or a scope ("
                                       f"{'not both' if names else 'give one of them'})")
        if scope is not None and not scope.strip("/"):
            raise InvalidArgumentError("delete(scope='') would remove every variable; use "
                                       "reset()")
        request = pb.DeleteRequest(names=names) if names else pb.DeleteRequest(scope=scope)
        return self._forget(self._delete(request))

    def reset(self) -> list[str]:
        """Removes every variable the server holds (as ``tf.Session.reset``); returns their
        names. This client forgets them as :meth:`delete` does."""
        return self._forget(self._delete(pb.DeleteRequest(all=True)))

    def _delete(self, request: pb.DeleteRequest) -> list[str]:
        return list(self.transport.call(self.stub.Delete, request).deleted)

    def _forget(self, names: list[str]) -> list[str]:
        for handle in self.naming.forget(names):
            if isinstance(handle, VariableHandle):
                handle._initializer = None
        return names

    def list_variables(self, scope: str | None = None) -> list[VariableInfo]:
        """Variables on the server (all, or those under ``scope``), sorted by name."""
        response = self.transport.call(self.stub.ListVariables,
                                       pb.ListVariablesRequest(scope=text(scope, "scope")))
        return [VariableInfo.from_proto(v) for v in response.variables]

    def wait_initialized(self, names: Sequence[str] = (), timeout: float = 60.0) -> list[str]:
        """Blocks until the named variables (all when empty) are initialized on the server or
        ``timeout`` seconds pass; returns the names still uninitialized."""
        response = self.transport.call(
            self.stub.WaitInitialized,
            pb.WaitInitializedRequest(names=name_list(names, "names"), timeout_seconds=timeout),
            timeout=timeout + 10.0)
        return list(response.uninitialized)

    # --- training (varstore.train) ----------------------------------------------------------

    def apply_gradients(self, optimizer: train.Optimizer, grads: Mapping[RemoteVariable, Any],
                        global_step: RemoteVariable | None = None,
                        local_step: int | None = None,
                        fetch: Sequence[RemoteVariable] | None = None) -> Any:
        """Applies ``{variable: gradient}`` on the server with ``optimizer`` in one round trip
        (see :func:`varstore.train.apply_gradients`); returns the new global step, or with
        ``fetch`` ``(global_step, values of fetch after the update)``."""
        return train.apply_gradients(self, optimizer, grads, global_step, local_step, fetch)

    def initialize_or_restore(self, variables: Sequence[RemoteVariable],
                              checkpoint_dir: str | None = None) -> str | None:
        """The chief's start: restores the newest checkpoint, or initializes ``variables``
        (see :func:`varstore.train.initialize_or_restore`); returns the checkpoint restored."""
        return train.initialize_or_restore(self, variables, checkpoint_dir)

    def wait_until_ready(self, variables: Sequence[Any], timeout: float = 600.0) -> None:
        """A worker's start: waits until ``variables`` are initialized (see
        :func:`varstore.train.wait_until_ready`); raises ``DeadlineExceededError``."""
        train.wait_until_ready(self, variables, timeout)

    # --- checkpoints and status -------------------------------------------------------------

    def save(self, prefix: str, var_list: Any = None, global_step: Any = None,
             max_to_keep: int | None = 5,
             progress: Callable[[pb.CheckpointProgress], None] | None = None, *,
             latest_filename: str | None = None, write_state: bool = True,
             saver: str | None = None) -> str:
        """Asks the server to write a checkpoint; returns its path (``prefix-STEP`` with
        ``global_step``, an integer or an integer variable).

        Retention is TensorFlow 1's ``Saver`` rule: the saves of one ``prefix`` by this client
        form one saver, which keeps the newest ``max_to_keep`` of the checkpoints it wrote
        (0 or None: deletes none) and never deletes others; ``saver`` names another saver
        (e.g. one shared by several prefixes). ``latest_filename`` names the state file
        (default ``checkpoint``); ``write_state=False`` writes none and deletes nothing.
        Raises ``TypeError`` for a non-integer step, the server's errors otherwise.
        """
        return self.save_checkpoint(
            prefix, var_list, global_step, max_to_keep, progress,
            latest_filename=latest_filename, write_state=write_state,
            saver=saver if saver is not None else self._savers.setdefault(
                prefix, uuid.uuid4().hex)).path

    def save_checkpoint(self, prefix: str, var_list: Any = None, global_step: Any = None,
                        max_to_keep: int | None = 5,
                        progress: Callable[[pb.CheckpointProgress], None] | None = None, *,
                        latest_filename: str | None = None, write_state: bool = True,
                        saver: str = "", keep_checkpoint_every_n_hours: float = 0.0
                        ) -> pb.CheckpointProgress:
        """:meth:`save` for savers that keep their own identity (``varstore.v1``'s
        ``Saver``): ``saver`` as is ("" deletes nothing), ``keep_checkpoint_every_n_hours``
        as TensorFlow's ``Saver``. Returns the last progress message: ``path`` and the
        saver's ``last_checkpoints``. ``global_step`` may be a variable, read first (as TF's
        ``Saver.save`` reads a step tensor)."""
        if hasattr(global_step, "op_name"):
            global_step = int(self._drive(global_step._read_steps()))
        request = pb.SaveRequest(
            prefix=text(prefix, "prefix"), entries=checkpoint_entries(var_list),
            has_global_step=global_step is not None,
            global_step=0 if global_step is None else operator.index(global_step),
            max_to_keep=operator.index(max_to_keep or 0), saver=saver,
            latest_filename=latest_filename or "", skip_state=not write_state,
            keep_checkpoint_every_n_hours=keep_checkpoint_every_n_hours)
        return self._checkpoint_call(self.stub.Save, request, progress)

    def restore(self, prefix: str, var_list: Any = None,
                progress: Callable[[pb.CheckpointProgress], None] | None = None) -> str:
        """Asks the server to restore variables from a checkpoint; returns its path."""
        request = pb.RestoreRequest(prefix=text(prefix, "prefix"),
                                    entries=checkpoint_entries(var_list))
        return self._checkpoint_call(self.stub.Restore, request, progress).path

    def _checkpoint_call(self, method: Any, request: Any,
                         progress: Callable[[pb.CheckpointProgress], None] | None
                         ) -> pb.CheckpointProgress:
        def follow(**options: Any) -> pb.CheckpointProgress:
            last = pb.CheckpointProgress()
            for message in method(request, **options):
                if progress is not None:
                    progress(message)
                if message.done:
                    last = message
            return last
        return self.transport.invoke(follow, idempotent=False)

    def latest_checkpoint(self, directory: str = "",
                          latest_filename: str | None = None) -> str | None:
        """The newest checkpoint in the server's checkpoint folder (or a folder inside it),
        as its state file ``latest_filename`` (default ``checkpoint``) records it."""
        response = self.transport.call(self.stub.LatestCheckpoint, pb.LatestCheckpointRequest(
            directory=text(directory, "directory"),
            latest_filename=text(latest_filename, "latest_filename")))
        return response.path or None

    def list_checkpoints(self, directory: str = "") -> list[pb.CheckpointInfo]:
        """The complete checkpoints in the server's checkpoint folder (or ``directory`` inside
        it, with its subfolders), newest first: each ``path`` (relative to the folder, as
        :meth:`restore` takes it), ``nbytes``, ``mtime`` (seconds since the epoch),
        ``shards`` (data files) and ``latest`` (its folder's ``checkpoint`` state file names
        it). The server lists at most 10,000 (then ``UserWarning``s that some are missing).

        Raises ``PermissionDeniedError`` for a folder outside the checkpoint folder.
        """
        response = self.transport.call(self.stub.ListCheckpoints, pb.ListCheckpointsRequest(
            directory=text(directory, "directory")))
        if response.truncated:
            warnings.warn("the server's checkpoint folder holds more than one listing shows: "
                          "some checkpoints are missing from it", stacklevel=2)
        return list(response.checkpoints)

    def status(self) -> pb.StatusResponse:
        """The server's version, uptime, store size, clients and last checkpoint."""
        return self.transport.call(self.stub.Status, pb.StatusRequest())
