from varstore.proto import varstore_pb2 as _varstore_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClusterInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClusterInfoResponse(_message.Message):
    __slots__ = ("shards", "task_index")
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    TASK_INDEX_FIELD_NUMBER: _ClassVar[int]
    shards: _containers.RepeatedScalarFieldContainer[str]
    task_index: int
    def __init__(self, shards: _Optional[_Iterable[str]] = ..., task_index: _Optional[int] = ...) -> None: ...

class Placement(_message.Message):
    __slots__ = ("name", "nbytes", "shard", "colocate_with", "lookup_only")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NBYTES_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    COLOCATE_WITH_FIELD_NUMBER: _ClassVar[int]
    LOOKUP_ONLY_FIELD_NUMBER: _ClassVar[int]
    name: str
    nbytes: int
    shard: int
    colocate_with: str
    lookup_only: bool
    def __init__(self, name: _Optional[str] = ..., nbytes: _Optional[int] = ..., shard: _Optional[int] = ..., colocate_with: _Optional[str] = ..., lookup_only: _Optional[bool] = ...) -> None: ...

class PlaceRequest(_message.Message):
    __slots__ = ("variables", "epoch", "forget")
    VARIABLES_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    FORGET_FIELD_NUMBER: _ClassVar[int]
    variables: _containers.RepeatedCompositeFieldContainer[Placement]
    epoch: int
    forget: bool
    def __init__(self, variables: _Optional[_Iterable[_Union[Placement, _Mapping]]] = ..., epoch: _Optional[int] = ..., forget: _Optional[bool] = ...) -> None: ...

class PlaceResponse(_message.Message):
    __slots__ = ("shards", "epoch")
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    shards: _containers.RepeatedScalarFieldContainer[int]
    epoch: int
    def __init__(self, shards: _Optional[_Iterable[int]] = ..., epoch: _Optional[int] = ...) -> None: ...

class HeldRequest(_message.Message):
    __slots__ = ("names",)
    NAMES_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, names: _Optional[_Iterable[str]] = ...) -> None: ...

class HeldResponse(_message.Message):
    __slots__ = ("variables",)
    VARIABLES_FIELD_NUMBER: _ClassVar[int]
    variables: _containers.RepeatedCompositeFieldContainer[Placement]
    def __init__(self, variables: _Optional[_Iterable[_Union[Placement, _Mapping]]] = ...) -> None: ...

class UnsavedRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UnsavedResponse(_message.Message):
    __slots__ = ("names",)
    NAMES_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, names: _Optional[_Iterable[str]] = ...) -> None: ...

class SavePartRequest(_message.Message):
    __slots__ = ("part_prefix", "entries")
    PART_PREFIX_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    part_prefix: str
    entries: _containers.RepeatedCompositeFieldContainer[_varstore_pb2.CheckpointEntry]
    def __init__(self, part_prefix: _Optional[str] = ..., entries: _Optional[_Iterable[_Union[_varstore_pb2.CheckpointEntry, _Mapping]]] = ...) -> None: ...

class SavePartResponse(_message.Message):
    __slots__ = ("bytes_written",)
    BYTES_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    bytes_written: int
    def __init__(self, bytes_written: _Optional[int] = ...) -> None: ...

class CommitPartsRequest(_message.Message):
    __slots__ = ("part_prefixes", "prefix", "has_global_step", "global_step", "max_to_keep", "abort", "saver", "latest_filename", "skip_state", "keep_checkpoint_every_n_hours")
    PART_PREFIXES_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    HAS_GLOBAL_STEP_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_STEP_FIELD_NUMBER: _ClassVar[int]
    MAX_TO_KEEP_FIELD_NUMBER: _ClassVar[int]
    ABORT_FIELD_NUMBER: _ClassVar[int]
    SAVER_FIELD_NUMBER: _ClassVar[int]
    LATEST_FILENAME_FIELD_NUMBER: _ClassVar[int]
    SKIP_STATE_FIELD_NUMBER: _ClassVar[int]
    KEEP_CHECKPOINT_EVERY_N_HOURS_FIELD_NUMBER: _ClassVar[int]
    part_prefixes: _containers.RepeatedScalarFieldContainer[str]
    prefix: str
    has_global_step: bool
    global_step: int
    max_to_keep: int
    abort: bool
    saver: str
    latest_filename: str
    skip_state: bool
    keep_checkpoint_every_n_hours: float
    def __init__(self, part_prefixes: _Optional[_Iterable[str]] = ..., prefix: _Optional[str] = ..., has_global_step: _Optional[bool] = ..., global_step: _Optional[int] = ..., max_to_keep: _Optional[int] = ..., abort: _Optional[bool] = ..., saver: _Optional[str] = ..., latest_filename: _Optional[str] = ..., skip_state: _Optional[bool] = ..., keep_checkpoint_every_n_hours: _Optional[float] = ...) -> None: ...

class CommitPartsResponse(_message.Message):
    __slots__ = ("path", "last_checkpoints")
    PATH_FIELD_NUMBER: _ClassVar[int]
    LAST_CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    path: str
    last_checkpoints: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, path: _Optional[str] = ..., last_checkpoints: _Optional[_Iterable[str]] = ...) -> None: ...

class CheckpointKeysRequest(_message.Message):
    __slots__ = ("prefix",)
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    def __init__(self, prefix: _Optional[str] = ...) -> None: ...

class CheckpointKey(_message.Message):
    __slots__ = ("key", "dtype", "shape", "slices")
    KEY_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    SLICES_FIELD_NUMBER: _ClassVar[int]
    key: str
    dtype: int
    shape: _containers.RepeatedScalarFieldContainer[int]
    slices: _containers.RepeatedCompositeFieldContainer[_varstore_pb2.SaveSlice]
    def __init__(self, key: _Optional[str] = ..., dtype: _Optional[int] = ..., shape: _Optional[_Iterable[int]] = ..., slices: _Optional[_Iterable[_Union[_varstore_pb2.SaveSlice, _Mapping]]] = ...) -> None: ...

class CheckpointKeysResponse(_message.Message):
    __slots__ = ("path", "keys")
    PATH_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    path: str
    keys: _containers.RepeatedCompositeFieldContainer[CheckpointKey]
    def __init__(self, path: _Optional[str] = ..., keys: _Optional[_Iterable[_Union[CheckpointKey, _Mapping]]] = ...) -> None: ...
