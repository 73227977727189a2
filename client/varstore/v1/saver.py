"""``tf.train.Saver`` and ``tf.train.latest_checkpoint``, as TensorFlow's ``saver.py``.

Checkpoints are written and read by the server, in TensorFlow's format, inside its
checkpoint folder: paths are resolved there, and keys are variable names without ``:0``.
"""

from __future__ import annotations

import contextlib
import operator
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

import varstore
from varstore.common.errors import NotFoundError, OpError
from varstore.proto import cluster_pb2 as cpb
from varstore.proto import cluster_pb2_grpc as cpb_grpc
from varstore.proto import varstore_pb2 as pb
from varstore.v1.graph import get_default_session
from varstore.v1.partitioned import PartitionedVariable
from varstore.v1.session import Session
from varstore.v1.variables import Variable, global_variables


def checkpoint_entries(var_list: Sequence[Any] | Mapping[str, Any]
                        ) -> list[pb.CheckpointEntry]:
    """What each checkpoint key holds, by TensorFlow's rules (``saveable_object_util``'s
    ``op_list_to_dict`` and ``saveable_objects_for_op``): a dict's keys name its values; in a
    list, a part of a partitioned variable (or a ``PartitionedVariable``) is saved under its
    full variable's name as one slice of it, any other variable under its own name. Raises
    TF's ``ValueError``/``TypeError`` for two variables under one name and bad slices."""
    named: dict[str, Any] = {}
    if isinstance(var_list, Mapping):
        named = dict(var_list)
    else:
        flat = [v for item in var_list
                for v in (item if isinstance(item, list | tuple) else [item])]
        for var in sorted(flat, key=lambda v: str(getattr(v, "name", ""))):
            part = var._get_save_slice_info() if isinstance(var, Variable) else None
            name = var.name if isinstance(var, PartitionedVariable) else \
                part.full_name if part is not None else getattr(getattr(var, "op", None),
                                                                "name", None)
            if part is not None:
                if name in named and not isinstance(named[name], list):
                    raise ValueError(f"Mixing slices and non-slices with the same name: {name}")
                named.setdefault(str(name), []).append(var)
                continue
            if name in named:
                raise ValueError(f"At least two variables have the same name: {name}")
            named[str(name)] = var
    entries = []
    for key, value in named.items():
        if isinstance(value, list | tuple | PartitionedVariable):
            entries += _slices(str(key), list(value))
        elif isinstance(value, Variable):
            entries.append(pb.CheckpointEntry(key=str(key), variable=value.op.name))
        else:
            raise TypeError(f"Variable to save is not a Variable: {value}")
    return entries


def _slices(key: str, parts: list[Any]) -> list[pb.CheckpointEntry]:
    """The parts of one partitioned variable, saved under ``key`` as slices of one tensor."""
    full_name = None
    entries = []
    for var in parts:
        if not isinstance(var, Variable):
            raise ValueError(f"Slices must all be Variables: {var}")
        info = var._get_save_slice_info()
        if info is None:
            raise ValueError(f"Slices must all be slices: {var}")
        if full_name is None:
            full_name = info.full_name
        elif full_name != info.full_name:
            raise ValueError(f"Slices must all be from the same tensor: {full_name} != "
                             f"{info.full_name}")
        proto = info.to_proto()
        proto.full_name = key
        entries.append(pb.CheckpointEntry(key=key, variable=var.op.name, slice=proto))
    return entries


class Saver:
    """Saves and restores variables through the server, as TensorFlow 1's ``tf.train.Saver``.

    ``var_list`` is a list of variables (saved under their own names; parts of partitioned
    variables, or ``PartitionedVariable``s, as slices of their full variable's tensor, as TF
    saves them) or a ``{key: variable or PartitionedVariable}`` dict; None means every
    global variable that exists when the saver is built (now, or at
    :meth:`build` with ``defer_build``). Retention is TF's: the saver keeps the newest
    ``max_to_keep`` checkpoints it wrote itself (0 or None: deletes none), plus one every
    ``keep_checkpoint_every_n_hours``, and never deletes a checkpoint another saver wrote; the
    server remembers the list while it runs. ``pad_step_number`` writes ``path-00000003``.

    Accepted with TF's signature but meaningless for a server: ``reshape``, ``sharded`` (the
    server decides the shards), ``name``, ``restore_sequentially``, ``write_version=2``,
    ``filename`` and ``save_relative_paths`` (the state file always holds paths relative to
    its folder, which lies on the server).
    Raises ``ValueError`` when there is nothing to save (unless ``allow_empty``), when two
    variables share a key, for ``defer_build`` with a ``var_list``, and for what would
    change what is saved and that the server cannot do: a ``saver_def`` or ``builder``
    (TF's graph-building machinery) or ``write_version=1`` (TF's deprecated V1 format).
    """

    def __init__(self, var_list: Sequence[Variable] | Mapping[str, Variable] | None = None,
                 reshape: bool = False, sharded: bool = False, max_to_keep: int | None = 5,
                 keep_checkpoint_every_n_hours: float = 10000.0, name: str | None = None,
                 restore_sequentially: bool = False, saver_def: Any = None,
                 builder: Any = None, defer_build: bool = False, allow_empty: bool = False,
                 write_version: int = 2, pad_step_number: bool = False,
                 save_relative_paths: bool = False, filename: str | None = None) -> None:
        for key, value in (("saver_def", saver_def), ("builder", builder)):
            if value is not None:
                raise ValueError(f"Saver({key}=...) is not supported: varstore's server "
                                 f"saves the variables of var_list itself, with no graph.")
        if write_version != 2:
            raise ValueError(f"Saver(write_version={write_version!r}) is not supported: the "
                             f"server writes V2 checkpoints (tf.train.SaverDef.V2) only.")
        if defer_build and var_list:
            raise ValueError("If `var_list` is provided then build cannot be deferred. "
                             "Either set defer_build=False or var_list=None.")
        self._var_list = var_list
        self._allow_empty = allow_empty
        self._pad_step_number = pad_step_number
        self.max_to_keep = 0 if max_to_keep is None else operator.index(max_to_keep)
        self._keep_hours = float(keep_checkpoint_every_n_hours)
        self._names: list[pb.CheckpointEntry] | None = None
        self._last_checkpoints: list[str] = []
        # The server deletes only what this name's saves wrote (see varstore.server.retention).
        self._saver = f"v1.Saver:{uuid.uuid4().hex}"
        if not defer_build:
            self.build()

    def build(self) -> None:
        """Collects the variables to save (TF builds the save and restore ops here); a second
        call does nothing. Raises ``ValueError`` as the constructor does."""
        if self._names is not None:
            return
        variables = global_variables() if self._var_list is None else self._var_list
        if not variables and not self._allow_empty:
            raise ValueError("No variables to save")
        self._names = checkpoint_entries(variables) if variables else []

    @property
    def last_checkpoints(self) -> list[str]:
        """The checkpoints this saver wrote and has not deleted, oldest first."""
        return list(self._last_checkpoints)

    def save(self, sess: Session, save_path: str, global_step: Any = None,
             latest_filename: str | None = None, meta_graph_suffix: str = "meta",
             write_meta_graph: bool = True, write_state: bool = True,
             strip_default_attrs: bool = False, save_debug_info: bool = False) -> str | None:
        """Writes a checkpoint ``save_path`` (``save_path-STEP`` with ``global_step``: any
        integer, or a tensor or variable evaluated in ``sess``); returns the path written,
        or None for an empty saver (``allow_empty``).

        ``latest_filename`` names the state file (default ``checkpoint``);
        ``write_state=False`` records nothing and deletes nothing. ``write_meta_graph``,
        ``meta_graph_suffix``, ``strip_default_attrs`` and ``save_debug_info`` are accepted
        for TF's signature; ``.meta`` files describe TF graphs and are never written. Raises
        ``RuntimeError`` before :meth:`build` with ``defer_build``, ``ValueError`` for a
        ``latest_filename`` with a path component or equal to ``save_path``'s name,
        ``FailedPreconditionError`` for uninitialized variables and
        ``PermissionDeniedError`` for a path outside the server's checkpoint folder.
        """
        if self._names is None:
            raise RuntimeError("`build()` should be called before save if defer_build==True")
        if latest_filename is None:
            latest_filename = "checkpoint"
        if os.path.split(latest_filename)[0]:
            raise ValueError("'latest_filename' must not contain path components")
        if global_step is not None:
            if not isinstance(global_step, int | np.integer):
                global_step = sess.run(global_step)
            step = operator.index(global_step)
            checkpoint_file = (f"{save_path}-{step:08d}" if self._pad_step_number
                               else f"{save_path}-{step}")
        else:
            checkpoint_file = save_path
            if os.path.basename(save_path) == latest_filename:
                raise ValueError("'latest_filename' collides with 'save_path': "
                                 f"'{latest_filename}' and '{save_path}'")
        if not self._names:
            return None
        sess.bind_variables()
        done = sess.client.save_checkpoint(
            checkpoint_file, self._names, max_to_keep=self.max_to_keep,
            latest_filename=latest_filename, write_state=write_state, saver=self._saver,
            keep_checkpoint_every_n_hours=self._keep_hours)
        if write_state:
            self._last_checkpoints = list(done.last_checkpoints)
        return done.path

    def restore(self, sess: Session, save_path: str | None) -> None:
        """Sets the variables to their values in checkpoint ``save_path``; other variables
        are left as they are.

        Raises ``ValueError`` for a None path, ``NotFoundError`` for a missing checkpoint or
        key, ``InvalidArgumentError`` for a shape or dtype mismatch.
        """
        if save_path is None:
            raise ValueError("Can't load save_path when it is None.")
        if self._names is None:
            self.build()
        if not self._names:
            return
        sess.bind_variables()
        sess.client.restore(save_path, self._names)


def latest_checkpoint(checkpoint_dir: str, latest_filename: str | None = None) -> str | None:
    """The newest checkpoint in ``checkpoint_dir`` (inside the server's checkpoint folder) as
    its state file ``latest_filename`` (default ``checkpoint``) records it, or None; asks the
    default session's server, else the one ``varstore.connect()`` finds."""
    with _server() as client:
        return client.latest_checkpoint(checkpoint_dir, latest_filename)


def list_variables(ckpt_dir_or_file: str) -> list[tuple[str, list[int]]]:
    """``(name, shape)`` of every tensor of a checkpoint, sorted by name, as TensorFlow's
    ``tf.train.list_variables``: a partitioned variable once, under its full name and shape.
    ``ckpt_dir_or_file`` is a checkpoint prefix or a folder (its newest checkpoint) inside the
    server's checkpoint folder; asks the server as :func:`latest_checkpoint` does.

    Raises ``NotFoundError`` for a missing checkpoint."""
    with _server() as client:
        stub = cpb_grpc.ClusterServiceStub(client.transport.channel)

        def keys(prefix: str) -> list[tuple[str, list[int]]]:
            reply = client.transport.call(stub.CheckpointKeys,
                                          cpb.CheckpointKeysRequest(prefix=prefix),
                                          idempotent=True)
            return sorted((k.key, list(k.shape)) for k in reply.keys)
        try:
            return keys(ckpt_dir_or_file)
        except NotFoundError:
            latest = None
            with contextlib.suppress(OpError):
                latest = client.latest_checkpoint(ckpt_dir_or_file)
            if latest is None:
                raise
            return keys(latest)


@contextlib.contextmanager
def _server() -> Iterator[varstore.Client]:
    """The default session's client, else a new connection (closed after)."""
    session = get_default_session()
    if session is not None:
        yield session.client
        return
    with varstore.connect() as client:
        yield client
