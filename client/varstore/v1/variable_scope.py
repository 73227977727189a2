"""``get_variable``, ``variable_scope`` and ``name_scope`` on the default graph.

The rules and messages are :class:`varstore.scopes.Naming`'s (TF's ``variable_scope.py``);
in graph mode they are local to the graph, as in TF: building a graph contacts no server.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from varstore import initializers
from varstore.common import dtypes
from varstore.scopes import AUTO_REUSE, VariableScope, check_initializer_dtype
from varstore.v1 import partitioned
from varstore.v1.array_ops import convert_to_tensor
from varstore.v1.graph import GraphKeys, get_default_graph, graph_of
from varstore.v1.init_ops import initializer_tensor
from varstore.v1.shapes import as_shape
from varstore.v1.variables import Variable, validate_synchronization_aggregation_trainable

__all__ = ["AUTO_REUSE", "VariableScope", "get_variable", "get_variable_scope", "name_scope",
           "variable_scope"]


def name_scope(name: str | None, default_name: str | None = None,
               values: Sequence[Any] | None = None) -> contextlib.AbstractContextManager[str]:
    """Opens a name scope (made unique: ``foo``, ``foo_1``) in the graph of ``values`` (else
    the default graph); yields its name with a trailing ``/``. ``get_variable`` ignores it."""
    return graph_of(values or ()).name_scope(name, default_name)


def variable_scope(name_or_scope: str | VariableScope | None, default_name: str | None = None,
                   values: Sequence[Any] | None = None, initializer: Any = None,
                   regularizer: Any = None, caching_device: Any = None,
                   partitioner: Any = None, custom_getter: Any = None, reuse: Any = None,
                   dtype: Any = None, use_resource: bool | None = None, constraint: Any = None,
                   auxiliary_name_scope: bool = True
                   ) -> contextlib.AbstractContextManager[VariableScope]:
    """Opens a variable scope and its name scope; yields the :class:`VariableScope`, with
    TF's arguments and rules (:meth:`varstore.scopes.Naming.variable_scope`).

    ``reuse`` is False/None (inherit), True (reuse existing) or ``AUTO_REUSE``; nested scopes
    inherit it. ``initializer``, ``regularizer``, ``partitioner``, ``custom_getter`` and
    ``dtype`` are defaults for ``get_variable`` inside, and so is ``use_resource`` (it sets
    the variables' reported dtype only); ``caching_device`` is kept but changes nothing
    (every value lives on the server).
    Raises TF's ``TypeError``/``ValueError`` for misuse.
    """
    return graph_of(values or ()).naming.variable_scope(
        name_or_scope, default_name, reuse, initializer,
        dtypes.as_dtype(dtype) if dtype is not None else None, auxiliary_name_scope,
        regularizer=regularizer, caching_device=caching_device, partitioner=partitioner,
        custom_getter=custom_getter, use_resource=use_resource, constraint=constraint)


def get_variable_scope() -> VariableScope:
    """The current variable scope of the default graph."""
    return get_default_graph().naming.var_scope


def get_variable(name: str, shape: Any = None, dtype: Any = None, initializer: Any = None,
                 regularizer: Any = None, trainable: bool | None = None,
                 collections: Sequence[str] | None = None, caching_device: Any = None,
                 partitioner: Any = None, validate_shape: bool = True,
                 use_resource: bool | None = None, custom_getter: Any = None,
                 constraint: Any = None, synchronization: Any = None, aggregation: Any = None
                 ) -> Variable:
    """The variable ``scope/name`` of the default graph, created when the scope's reuse mode
    allows it; TF's rules, arguments and ``ValueError`` messages (``variable_scope.py``).

    ``initializer`` is an initializer (class or instance), a callable ``(shape, dtype)``, or
    a value or tensor (then ``shape`` must be omitted, and an explicit ``dtype`` must be the
    value's). Without one, float variables get glorot_uniform and others zeros.
    ``regularizer(var)``'s loss goes to the ``regularization_losses`` collection;
    ``custom_getter(getter, name, ...)`` is called instead of the getter, as in TF;
    ``constraint`` is kept on the variable; ``use_resource=True`` gives a variable whose
    dtype is the base dtype (TF 1.x: ``float32`` for a resource variable, ``float32_ref``
    for a reference one). ``synchronization`` and ``aggregation`` are checked as TF checks
    them, and ``synchronization=ON_READ`` makes the variable non-trainable unless
    ``trainable`` is given; ``caching_device`` is accepted and changes nothing (every value
    lives on the server). Arguments left None take the variable scope's defaults.
    """
    graph = get_default_graph()
    scope = graph.naming.var_scope
    regularizer = regularizer if regularizer is not None else scope.regularizer
    partitioner = partitioner if partitioner is not None else scope.partitioner
    custom_getter = custom_getter if custom_getter is not None else scope.custom_getter
    full = graph.naming.full_name(name)
    _, _, trainable = validate_synchronization_aggregation_trainable(
        synchronization, aggregation, trainable, full)
    with graph.name_scope(None):
        if dtype is not None and initializer is not None and not callable(initializer):
            dtype = dtypes.as_dtype(dtype)
            check_initializer_dtype(convert_to_tensor(initializer).dtype.base_dtype, dtype)
        kwargs = {
            "name": full, "shape": shape,
            "dtype": dtype if dtype is not None else scope.dtype or dtypes.float32,
            "initializer": initializer if initializer is not None else scope.initializer,
            "regularizer": regularizer, "reuse": scope.reuse, "trainable": trainable,
            "collections": collections, "caching_device": caching_device,
            "partitioner": partitioner, "validate_shape": validate_shape,
            "use_resource": use_resource if use_resource is not None else scope.use_resource,
            "constraint": constraint if constraint is not None else scope.constraint,
            "synchronization": synchronization, "aggregation": aggregation}
        if custom_getter is not None:
            if not callable(custom_getter):
                raise ValueError(f"Passed a custom_getter which is not callable: "
                                 f"{custom_getter}")
            return custom_getter(getter=_true_getter, **kwargs)
        return _true_getter(**kwargs)


def _true_getter(name: str, shape: Any = None, dtype: Any = dtypes.float32,
                 initializer: Any = None, regularizer: Any = None, reuse: Any = None,
                 trainable: bool | None = None, collections: Sequence[str] | None = None,
                 caching_device: Any = None, partitioner: Any = None,
                 validate_shape: bool = True, use_resource: bool | None = None,
                 constraint: Any = None, synchronization: Any = None,
                 aggregation: Any = None) -> Any:
    """The getter a custom getter receives: gets or creates the variable with full name
    ``name`` (TF's ``_VariableStore.get_variable._true_getter``)."""
    naming = get_default_graph().naming
    dtype = dtypes.as_dtype(dtype)
    shape = None if shape is None else as_shape(shape)
    init = initializer
    from_value = init is not None and not callable(init)
    if partitioner is not None and not (shape is not None and shape.rank == 0):
        return partitioned.get_partitioned_variable(
            name, shape, dtype, init, partitioner, reuse, naming.partitioned,
            lambda part_name, part_shape, part_init: _true_getter(
                part_name, part_shape, dtype, part_init, regularizer, reuse, trainable,
                collections, validate_shape=validate_shape, use_resource=use_resource,
                constraint=constraint), naming.shared)
    if shape is not None and from_value:
        raise ValueError("If initializer is a constant, do not specify shape.")

    def create(full: str) -> Variable:
        if init is None and shape is None:
            raise ValueError(f"Variable {full} did not get an initializer, so its `shape` "
                             f"argument must be specified.")
        if from_value:
            var = Variable(init, trainable=trainable, collections=collections, name=full,
                           validate_shape=validate_shape, constraint=constraint,
                           use_resource=use_resource)
        else:
            if shape is None or not shape.is_fully_defined():
                raise ValueError(
                    f"Shape of a new variable ({full}) must be fully defined, but instead was "
                    f"{shape}.")
            if init is None or isinstance(init, initializers.Initializer) or (
                    isinstance(init, type) and issubclass(init, initializers.Initializer)):
                resolved = initializers.resolve(init, dtype)
                value: Any = lambda: initializer_tensor(resolved, shape, dtype)  # noqa: E731
            else:
                value = lambda: init(shape.as_list(), dtype=dtype)  # noqa: E731
            var = Variable(value, trainable=trainable, collections=collections, name=full,
                           dtype=dtype, validate_shape=validate_shape, constraint=constraint,
                           use_resource=use_resource)
        var.created_by = "get_variable"
        if regularizer is not None:
            with naming.name_scope(f"{full}/Regularizer/"):
                loss = regularizer(var)
            if loss is not None:
                get_default_graph().add_to_collection(GraphKeys.REGULARIZATION_LOSSES, loss)
        return var

    return naming.get_variable(
        name, None if shape is None else tuple(shape.as_list()), dtype, create,
        describe=lambda v: (tuple(v.shape.as_list()), v.dtype), reuse=reuse)
