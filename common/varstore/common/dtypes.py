"""TensorFlow data types and their numpy equivalents.

varstore names dtypes with TensorFlow's ``DataType`` enum numbers on the wire and in
checkpoints; in Python they are :class:`DType` objects with TensorFlow's names
(``float32``, ``int64``, ``string``...). Strings are numpy object arrays of ``bytes``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np

from varstore.common.errors import clip


@dataclass(frozen=True)
class DType:
    """A tensor element type: TensorFlow's enum number, its name and numpy's dtype."""

    enum: int
    name: str
    np_dtype: np.dtype

    @property
    def is_string(self) -> bool:
        """True for ``string``, whose elements are variable-length bytes."""
        return self.base_dtype.enum == 7

    @property
    def is_floating(self) -> bool:
        """True for the real floating-point types (half, bfloat16, float, double)."""
        return self.base_dtype.name in ("float16", "bfloat16", "float32", "float64")

    @property
    def is_integer(self) -> bool:
        """True for the signed and unsigned integer types."""
        return self.base_dtype.name.startswith(("int", "uint"))

    @property
    def itemsize(self) -> int:
        """Bytes per element; 0 for strings."""
        return 0 if self.is_string else self.np_dtype.itemsize

    @property
    def as_numpy_dtype(self) -> Any:
        """The numpy scalar type, as TensorFlow's ``DType.as_numpy_dtype``."""
        return self.np_dtype.type

    @property
    def base_dtype(self) -> DType:
        """The non-reference dtype: ``float32`` for ``float32_ref``, else the dtype itself
        (TF's ``DType.base_dtype``; reference enums are the base enum + 100, as TF's
        types.proto)."""
        return _BY_ENUM[self.enum - _REF_OFFSET] if self.enum > _REF_OFFSET else self

    @property
    def _is_ref_dtype(self) -> bool:
        """True for a reference dtype (``float32_ref``), the dtype TF 1.x reports for a
        reference variable (TF's ``DType._is_ref_dtype``)."""
        return self.enum > _REF_OFFSET

    @property
    def _as_ref(self) -> DType:
        """The reference dtype of this dtype's base (TF's ``DType._as_ref``)."""
        return _REFS[self.base_dtype.enum]

    @property
    def real_dtype(self) -> DType:
        """The dtype of a complex type's parts, else the base dtype (TF's ``real_dtype``)."""
        return {"complex64": _BY_NAME["float32"],
                "complex128": _BY_NAME["float64"]}.get(self.base_dtype.name, self.base_dtype)

    @property
    def is_complex(self) -> bool:
        """True for complex64 and complex128."""
        return self.base_dtype.name.startswith("complex")

    @property
    def is_bool(self) -> bool:
        """True for ``bool``."""
        return self.base_dtype.name == "bool"

    def is_compatible_with(self, other: Any) -> bool:
        """Whether a value of ``other`` may be used where this dtype is expected, as
        TensorFlow's ``DType.is_compatible_with``: same base dtype, and a reference dtype
        accepts only reference values (``float32_ref`` is not compatible with ``float32``;
        ``float32`` is with ``float32_ref``)."""
        other_dtype = as_dtype(other)
        if isinstance(other, DType):
            other_dtype = other
        elif isinstance(other, str) and other.endswith("_ref"):
            other_dtype = other_dtype._as_ref
        return other_dtype.base_dtype == self.base_dtype and (
            other_dtype._is_ref_dtype or not self._is_ref_dtype)

    def __repr__(self) -> str:
        return f"tf.{self.name}"

    def __str__(self) -> str:
        return f"<dtype: '{self.name}'>"


# A reference dtype's enum is its base's + 100 (TF's types.proto: DT_FLOAT_REF = 101).
_REF_OFFSET = 100
_TABLE = [
    (1, "float32", np.dtype(np.float32)),
    (2, "float64", np.dtype(np.float64)),
    (3, "int32", np.dtype(np.int32)),
    (4, "uint8", np.dtype(np.uint8)),
    (5, "int16", np.dtype(np.int16)),
    (6, "int8", np.dtype(np.int8)),
    (7, "string", np.dtype(object)),
    (8, "complex64", np.dtype(np.complex64)),
    (9, "int64", np.dtype(np.int64)),
    (10, "bool", np.dtype(np.bool_)),
    (14, "bfloat16", np.dtype(ml_dtypes.bfloat16)),
    (17, "uint16", np.dtype(np.uint16)),
    (18, "complex128", np.dtype(np.complex128)),
    (19, "float16", np.dtype(np.float16)),
    (22, "uint32", np.dtype(np.uint32)),
    (23, "uint64", np.dtype(np.uint64)),
]

ALL: tuple[DType, ...] = tuple(DType(e, n, d) for e, n, d in _TABLE)
_BY_ENUM = {d.enum: d for d in ALL}
_BY_NAME = {d.name: d for d in ALL}
_BY_NAME.update({"half": _BY_NAME["float16"], "float": _BY_NAME["float32"],
                 "double": _BY_NAME["float64"]})
_BY_NUMPY = {d.np_dtype: d for d in ALL if not d.is_string}
# TF 1.x reference variables report these (``float32_ref``); they never go on the wire.
_REFS = {d.enum: DType(d.enum + _REF_OFFSET, f"{d.name}_ref", d.np_dtype) for d in ALL}

float16 = half = _BY_NAME["float16"]
bfloat16 = _BY_NAME["bfloat16"]
float32 = _BY_NAME["float32"]
float64 = double = _BY_NAME["float64"]
int8 = _BY_NAME["int8"]
int16 = _BY_NAME["int16"]
int32 = _BY_NAME["int32"]
int64 = _BY_NAME["int64"]
uint8 = _BY_NAME["uint8"]
uint16 = _BY_NAME["uint16"]
uint32 = _BY_NAME["uint32"]
uint64 = _BY_NAME["uint64"]
bool_ = _BY_NAME["bool"]
complex64 = _BY_NAME["complex64"]
complex128 = _BY_NAME["complex128"]
string = _BY_NAME["string"]


def from_enum(enum: int) -> DType:
    """The dtype with TensorFlow enum number ``enum``; raises ``ValueError`` if unknown."""
    try:
        return _BY_ENUM[enum]
    except KeyError:
        raise ValueError(f"unsupported dtype enum {enum}") from None


def as_dtype(value: Any, keep_ref: bool = False) -> DType:
    """Converts a DType, its name, a numpy dtype or a Python type to a base :class:`DType`
    (a reference dtype such as ``float32_ref`` gives its base, as TF's ops take
    ``as_dtype(dtype).base_dtype``; with ``keep_ref``, the name ``"float32_ref"`` and a
    reference DType stay reference dtypes, as TF's public ``tf.as_dtype``).

    Raises ``TypeError`` for anything that names no supported type.
    """
    if isinstance(value, DType):
        return value if keep_ref else value.base_dtype
    if isinstance(value, str) and keep_ref and value.endswith("_ref"):
        return as_dtype(value.removesuffix("_ref"))._as_ref
    if isinstance(value, np.dtype) and value in _BY_NUMPY:  # the hot case, checked first
        return _BY_NUMPY[value]
    if isinstance(value, str):
        # TF 1.x reference variables' dtypes (``float32_ref``) stand for their base dtype.
        name = value.removesuffix("_ref")
        if name in _BY_NAME:
            return _BY_NAME[name]
        raise TypeError(f"unknown dtype name {value[:100]!r}")
    if value in (bytes, str):
        return string
    enum = getattr(value, "enum", None)
    if isinstance(enum, int) and enum in _BY_ENUM:
        return _BY_ENUM[enum]
    tf_name = getattr(value, "name", None)
    if isinstance(tf_name, str) and not isinstance(value, np.dtype) \
            and tf_name.removesuffix("_ref") in _BY_NAME:
        return _BY_NAME[tf_name.removesuffix("_ref")]
    try:
        np_dtype = np.dtype(value)
    except TypeError:
        raise TypeError(f"cannot convert {value!r} to a dtype") from None
    if np_dtype.kind in "OSU":
        return string
    if np_dtype in _BY_NUMPY:
        return _BY_NUMPY[np_dtype]
    raise TypeError(f"unsupported numpy dtype {np_dtype}")


_INT32 = np.iinfo(np.int32)
_INT64 = np.iinfo(np.int64)


def infer(value: Any) -> DType:
    """TensorFlow's dtype for a Python or numpy value, as ``tf.constant`` infers it.

    numpy arrays and scalars keep their dtype. Python values: any float makes float32; ints
    are int32, or int64 when one does not fit int32; bools bool; complex complex128; bytes and
    str string; an empty list float32 (TF's ``convert_to_tensor``, tensor_util.py).

    Raises:
        ValueError: an integer that fits neither int32 nor int64, or a ragged list.
        TypeError: a value with no TensorFlow dtype.
    """
    if isinstance(value, np.ndarray | np.generic):
        return as_dtype(value.dtype)
    if isinstance(value, bytes | str):
        return string
    try:
        array = np.asarray(value)
    except (ValueError, OverflowError) as e:
        raise ValueError(f"Can't convert {_short(value)} to a tensor: {e}") from None
    kind = array.dtype.kind
    if kind == "f" or (array.size == 0 and kind in "fO"):
        return float32
    if kind in "iu":
        if array.size == 0 or (_INT32.min <= array.min() and array.max() <= _INT32.max):
            return int32
        if array.max() <= _INT64.max:
            return int64
        raise ValueError(f"Can't convert Python list with out-of-range integer to int64: "
                         f"{_short(value)}")
    if kind == "b":
        return bool_
    if kind == "c":
        return complex128
    if kind in "SU":
        return string
    items = array.reshape(-1).tolist()
    if all(isinstance(v, bytes | str) for v in items):
        return string
    if all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        raise ValueError(f"Can't convert Python list with out-of-range integer to int64: "
                         f"{_short(value)}")
    raise TypeError(f"Failed to convert object of type {type(value)} to Tensor.")


def check_convertible(value: Any, dtype: DType) -> None:
    """TensorFlow's check that a Python value may become ``dtype`` (no float to int, no int
    or float to bool), as ``tf.constant(value, dtype)`` makes it; numpy values always may.

    Raises:
        TypeError: with TensorFlow's message, naming the first item that does not fit.
    """
    if isinstance(value, np.ndarray | np.generic):
        return
    for item in np.asarray(value, dtype=object).reshape(-1):
        if dtype.is_integer:
            ok = isinstance(item, int | np.integer)
        elif dtype == bool_:
            ok = isinstance(item, bool | np.bool_)
        elif dtype.is_floating:
            ok = isinstance(item, int | float | np.integer | np.floating)
        else:
            ok = True
        if not ok:
            raise TypeError(f"Expected {dtype.name}, but got {_short(item)} of type "
                            f"'{type(item).__name__}'.")


def convert(value: Any, dtype: DType) -> np.ndarray:
    """``value`` as a numpy array of ``dtype`` by TensorFlow's conversion rules
    (``tf.convert_to_tensor(value, dtype)``, tensor_util.py): numpy values are cast (a float64
    array becomes a float32 or int32 one), Python values must fit (:func:`check_convertible`:
    no float to an integer, no int to bool).

    Raises:
        ValueError: ``value`` is None (TF's message).
        TypeError: a Python value that does not fit ``dtype``.
    """
    if value is None:
        raise ValueError("Attempt to convert a value (None) with an unsupported type "
                         "(<class 'NoneType'>) to a Tensor.")
    check_convertible(value, dtype)
    return to_numpy(value, dtype)


def _short(value: Any) -> str:
    """``repr(value)`` cut for messages that quote user input."""
    return clip(repr(value), 80)


def to_numpy(value: Any, dtype: DType) -> np.ndarray:
    """``value`` as a C-contiguous numpy array of ``dtype`` (strings become object bytes)."""
    if dtype.is_string:
        arr = np.array(value, dtype=object)
        flat = [v.encode() if isinstance(v, str) else bytes(v) for v in arr.reshape(-1)]
        out = np.empty(len(flat), dtype=object)
        out[:] = flat
        return out.reshape(arr.shape)
    return np.asarray(value, dtype=dtype.np_dtype, order="C")
