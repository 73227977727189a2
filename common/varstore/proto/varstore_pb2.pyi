from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CREATE_OR_BIND: _ClassVar[CreateMode]
    BIND: _ClassVar[CreateMode]
CREATE_OR_BIND: CreateMode
BIND: CreateMode

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "content", "streamed_bytes")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    STREAMED_BYTES_FIELD_NUMBER: _ClassVar[int]
    dtype: int
    shape: _containers.RepeatedScalarFieldContainer[int]
    content: bytes
    streamed_bytes: int
    def __init__(self, dtype: _Optional[int] = ..., shape: _Optional[_Iterable[int]] = ..., content: _Optional[bytes] = ..., streamed_bytes: _Optional[int] = ...) -> None: ...

class Shape(_message.Message):
    __slots__ = ("dim",)
    DIM_FIELD_NUMBER: _ClassVar[int]
    dim: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, dim: _Optional[_Iterable[int]] = ...) -> None: ...

class AttrValue(_message.Message):
    __slots__ = ("i", "f", "s", "b", "shape")
    I_FIELD_NUMBER: _ClassVar[int]
    F_FIELD_NUMBER: _ClassVar[int]
    S_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    i: int
    f: float
    s: str
    b: bool
    shape: Shape
    def __init__(self, i: _Optional[int] = ..., f: _Optional[float] = ..., s: _Optional[str] = ..., b: _Optional[bool] = ..., shape: _Optional[_Union[Shape, _Mapping]] = ...) -> None: ...

class Node(_message.Message):
    __slots__ = ("op", "inputs", "control_inputs", "variable", "tensor", "attrs")
    class AttrsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: AttrValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[AttrValue, _Mapping]] = ...) -> None: ...
    OP_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    CONTROL_INPUTS_FIELD_NUMBER: _ClassVar[int]
    VARIABLE_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    ATTRS_FIELD_NUMBER: _ClassVar[int]
    op: str
    inputs: _containers.RepeatedScalarFieldContainer[int]
    control_inputs: _containers.RepeatedScalarFieldContainer[int]
    variable: str
    tensor: int
    attrs: _containers.MessageMap[str, AttrValue]
    def __init__(self, op: _Optional[str] = ..., inputs: _Optional[_Iterable[int]] = ..., control_inputs: _Optional[_Iterable[int]] = ..., variable: _Optional[str] = ..., tensor: _Optional[int] = ..., attrs: _Optional[_Mapping[str, AttrValue]] = ...) -> None: ...

class VariableSpec(_message.Message):
    __slots__ = ("name", "dtype", "shape", "trainable", "mode", "initializer", "created_by", "initializer_desc", "save_slice")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    TRAINABLE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    INITIALIZER_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    INITIALIZER_DESC_FIELD_NUMBER: _ClassVar[int]
    SAVE_SLICE_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: int
    shape: Shape
    trainable: bool
    mode: CreateMode
    initializer: int
    created_by: str
    initializer_desc: str
    save_slice: SaveSlice
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[int] = ..., shape: _Optional[_Union[Shape, _Mapping]] = ..., trainable: _Optional[bool] = ..., mode: _Optional[_Union[CreateMode, str]] = ..., initializer: _Optional[int] = ..., created_by: _Optional[str] = ..., initializer_desc: _Optional[str] = ..., save_slice: _Optional[_Union[SaveSlice, _Mapping]] = ...) -> None: ...

class SaveSlice(_message.Message):
    __slots__ = ("full_name", "full_shape", "offset", "shape")
    FULL_NAME_FIELD_NUMBER: _ClassVar[int]
    FULL_SHAPE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    full_name: str
    full_shape: _containers.RepeatedScalarFieldContainer[int]
    offset: _containers.RepeatedScalarFieldContainer[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, full_name: _Optional[str] = ..., full_shape: _Optional[_Iterable[int]] = ..., offset: _Optional[_Iterable[int]] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class RunRequest(_message.Message):
    __slots__ = ("variables", "nodes", "tensors", "fetches", "targets")
    VARIABLES_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    FETCHES_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    variables: _containers.RepeatedCompositeFieldContainer[VariableSpec]
    nodes: _containers.RepeatedCompositeFieldContainer[Node]
    tensors: _containers.RepeatedCompositeFieldContainer[Tensor]
    fetches: _containers.RepeatedScalarFieldContainer[int]
    targets: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, variables: _Optional[_Iterable[_Union[VariableSpec, _Mapping]]] = ..., nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ..., tensors: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., fetches: _Optional[_Iterable[int]] = ..., targets: _Optional[_Iterable[int]] = ...) -> None: ...

class VariableInfo(_message.Message):
    __slots__ = ("name", "dtype", "shape", "trainable", "initialized", "version", "created_by", "initializer_desc", "nbytes", "created", "save_slice")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    TRAINABLE_FIELD_NUMBER: _ClassVar[int]
    INITIALIZED_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    INITIALIZER_DESC_FIELD_NUMBER: _ClassVar[int]
    NBYTES_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    SAVE_SLICE_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: int
    shape: Shape
    trainable: bool
    initialized: bool
    version: int
    created_by: str
    initializer_desc: str
    nbytes: int
    created: bool
    save_slice: SaveSlice
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[int] = ..., shape: _Optional[_Union[Shape, _Mapping]] = ..., trainable: _Optional[bool] = ..., initialized: _Optional[bool] = ..., version: _Optional[int] = ..., created_by: _Optional[str] = ..., initializer_desc: _Optional[str] = ..., nbytes: _Optional[int] = ..., created: _Optional[bool] = ..., save_slice: _Optional[_Union[SaveSlice, _Mapping]] = ...) -> None: ...

class RunResponse(_message.Message):
    __slots__ = ("values", "variables")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    VARIABLES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedCompositeFieldContainer[Tensor]
    variables: _containers.RepeatedCompositeFieldContainer[VariableInfo]
    def __init__(self, values: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., variables: _Optional[_Iterable[_Union[VariableInfo, _Mapping]]] = ...) -> None: ...

class RunChunk(_message.Message):
    __slots__ = ("request", "response", "data")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    request: RunRequest
    response: RunResponse
    data: bytes
    def __init__(self, request: _Optional[_Union[RunRequest, _Mapping]] = ..., response: _Optional[_Union[RunResponse, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ListVariablesRequest(_message.Message):
    __slots__ = ("scope",)
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    scope: str
    def __init__(self, scope: _Optional[str] = ...) -> None: ...

class ListVariablesResponse(_message.Message):
    __slots__ = ("variables",)
    VARIABLES_FIELD_NUMBER: _ClassVar[int]
    variables: _containers.RepeatedCompositeFieldContainer[VariableInfo]
    def __init__(self, variables: _Optional[_Iterable[_Union[VariableInfo, _Mapping]]] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("names", "scope", "all")
    NAMES_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    scope: str
    all: bool
    def __init__(self, names: _Optional[_Iterable[str]] = ..., scope: _Optional[str] = ..., all: _Optional[bool] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, deleted: _Optional[_Iterable[str]] = ...) -> None: ...

class WaitInitializedRequest(_message.Message):
    __slots__ = ("names", "timeout_seconds")
    NAMES_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    timeout_seconds: float
    def __init__(self, names: _Optional[_Iterable[str]] = ..., timeout_seconds: _Optional[float] = ...) -> None: ...

class WaitInitializedResponse(_message.Message):
    __slots__ = ("uninitialized",)
    UNINITIALIZED_FIELD_NUMBER: _ClassVar[int]
    uninitialized: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, uninitialized: _Optional[_Iterable[str]] = ...) -> None: ...

class CheckpointEntry(_message.Message):
    __slots__ = ("key", "variable", "slice")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VARIABLE_FIELD_NUMBER: _ClassVar[int]
    SLICE_FIELD_NUMBER: _ClassVar[int]
    key: str
    variable: str
    slice: SaveSlice
    def __init__(self, key: _Optional[str] = ..., variable: _Optional[str] = ..., slice: _Optional[_Union[SaveSlice, _Mapping]] = ...) -> None: ...

class SaveRequest(_message.Message):
    __slots__ = ("prefix", "entries", "has_global_step", "global_step", "max_to_keep", "saver", "latest_filename", "skip_state", "keep_checkpoint_every_n_hours")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    HAS_GLOBAL_STEP_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_STEP_FIELD_NUMBER: _ClassVar[int]
    MAX_TO_KEEP_FIELD_NUMBER: _ClassVar[int]
    SAVER_FIELD_NUMBER: _ClassVar[int]
    LATEST_FILENAME_FIELD_NUMBER: _ClassVar[int]
    SKIP_STATE_FIELD_NUMBER: _ClassVar[int]
    KEEP_CHECKPOINT_EVERY_N_HOURS_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    entries: _containers.RepeatedCompositeFieldContainer[CheckpointEntry]
    has_global_step: bool
    global_step: int
    max_to_keep: int
    saver: str
    latest_filename: str
    skip_state: bool
    keep_checkpoint_every_n_hours: float
    def __init__(self, prefix: _Optional[str] = ..., entries: _Optional[_Iterable[_Union[CheckpointEntry, _Mapping]]] = ..., has_global_step: _Optional[bool] = ..., global_step: _Optional[int] = ..., max_to_keep: _Optional[int] = ..., saver: _Optional[str] = ..., latest_filename: _Optional[str] = ..., skip_state: _Optional[bool] = ..., keep_checkpoint_every_n_hours: _Optional[float] = ...) -> None: ...

class RestoreRequest(_message.Message):
    __slots__ = ("prefix", "entries", "verify_only")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    VERIFY_ONLY_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    entries: _containers.RepeatedCompositeFieldContainer[CheckpointEntry]
    verify_only: bool
    def __init__(self, prefix: _Optional[str] = ..., entries: _Optional[_Iterable[_Union[CheckpointEntry, _Mapping]]] = ..., verify_only: _Optional[bool] = ...) -> None: ...

class CheckpointProgress(_message.Message):
    __slots__ = ("bytes_done", "bytes_total", "tensors_done", "tensors_total", "path", "done", "last_checkpoints")
    BYTES_DONE_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    TENSORS_DONE_FIELD_NUMBER: _ClassVar[int]
    TENSORS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    LAST_CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    bytes_done: int
    bytes_total: int
    tensors_done: int
    tensors_total: int
    path: str
    done: bool
    last_checkpoints: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, bytes_done: _Optional[int] = ..., bytes_total: _Optional[int] = ..., tensors_done: _Optional[int] = ..., tensors_total: _Optional[int] = ..., path: _Optional[str] = ..., done: _Optional[bool] = ..., last_checkpoints: _Optional[_Iterable[str]] = ...) -> None: ...

class LatestCheckpointRequest(_message.Message):
    __slots__ = ("directory", "latest_filename")
    DIRECTORY_FIELD_NUMBER: _ClassVar[int]
    LATEST_FILENAME_FIELD_NUMBER: _ClassVar[int]
    directory: str
    latest_filename: str
    def __init__(self, directory: _Optional[str] = ..., latest_filename: _Optional[str] = ...) -> None: ...

class ListCheckpointsRequest(_message.Message):
    __slots__ = ("directory",)
    DIRECTORY_FIELD_NUMBER: _ClassVar[int]
    directory: str
    def __init__(self, directory: _Optional[str] = ...) -> None: ...

class CheckpointInfo(_message.Message):
    __slots__ = ("path", "nbytes", "mtime", "shards", "latest")
    PATH_FIELD_NUMBER: _ClassVar[int]
    NBYTES_FIELD_NUMBER: _ClassVar[int]
    MTIME_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    LATEST_FIELD_NUMBER: _ClassVar[int]
    path: str
    nbytes: int
    mtime: float
    shards: int
    latest: bool
    def __init__(self, path: _Optional[str] = ..., nbytes: _Optional[int] = ..., mtime: _Optional[float] = ..., shards: _Optional[int] = ..., latest: _Optional[bool] = ...) -> None: ...

class ListCheckpointsResponse(_message.Message):
    __slots__ = ("checkpoints", "truncated")
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    checkpoints: _containers.RepeatedCompositeFieldContainer[CheckpointInfo]
    truncated: bool
    def __init__(self, checkpoints: _Optional[_Iterable[_Union[CheckpointInfo, _Mapping]]] = ..., truncated: _Optional[bool] = ...) -> None: ...

class LatestCheckpointResponse(_message.Message):
    __slots__ = ("path",)
    PATH_FIELD_NUMBER: _ClassVar[int]
    path: str
    def __init__(self, path: _Optional[str] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("version", "uptime_seconds", "variable_count", "bytes_stored", "connected_clients", "last_checkpoint", "last_checkpoint_time", "checkpoint_dir", "max_memory", "requests_per_second", "cpu_percent", "requests_in_flight")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    VARIABLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    BYTES_STORED_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_CLIENTS_FIELD_NUMBER: _ClassVar[int]
    LAST_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    LAST_CHECKPOINT_TIME_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_DIR_FIELD_NUMBER: _ClassVar[int]
    MAX_MEMORY_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    version: str
    uptime_seconds: float
    variable_count: int
    bytes_stored: int
    connected_clients: int
    last_checkpoint: str
    last_checkpoint_time: float
    checkpoint_dir: str
    max_memory: int
    requests_per_second: float
    cpu_percent: float
    requests_in_flight: int
    def __init__(self, version: _Optional[str] = ..., uptime_seconds: _Optional[float] = ..., variable_count: _Optional[int] = ..., bytes_stored: _Optional[int] = ..., connected_clients: _Optional[int] = ..., last_checkpoint: _Optional[str] = ..., last_checkpoint_time: _Optional[float] = ..., checkpoint_dir: _Optional[str] = ..., max_memory: _Optional[int] = ..., requests_per_second: _Optional[float] = ..., cpu_percent: _Optional[float] = ..., requests_in_flight: _Optional[int] = ...) -> None: ...
