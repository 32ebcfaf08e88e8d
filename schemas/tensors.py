"""Tensor codecs for model deltas, and the error-feedback residual.

Codecs (``Codec``):

- ``float32``: raw little-endian float32, lossless.
- ``float16``: raw little-endian float16.
- ``int8``: symmetric int8 with one float32 scale per tensor (``chunk == 0``) or per chunk of
  ``chunk`` elements, and stochastic rounding so the quantisation is unbiased.
- ``topk``: the ``k`` largest-magnitude elements as uint32 indices plus int8 values (one scale).

Lossy codecs lose information a device can keep: :class:`ErrorFeedback` carries the part of
each delta that the codec dropped into the next one, so compression error is delayed, not lost.
Decoding bounds every size from the declared shape before any array is built.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from .errors import Reason, ValidationError
from .limits import DEFAULT_LIMITS, Limits

Params = dict[str, np.ndarray]
"""Named float32 tensors, in a fixed order (model parameters, or a delta of them)."""

_LE_F32 = np.dtype("<f4")
_LE_F16 = np.dtype("<f2")
_LE_U32 = np.dtype("<u4")


class Codec(StrEnum):
    FLOAT32 = "float32"
    FLOAT16 = "float16"
    INT8 = "int8"
    TOPK = "topk"


@dataclass(frozen=True, slots=True)
class CodecSpec:
    """How to encode: the codec and its knobs (sent in a task, echoed in an update)."""

    codec: Codec = Codec.INT8
    chunk: int = 0
    """int8: elements per scale; 0 = one scale per tensor."""
    topk_fraction: float = 0.01
    """topk: fraction of each tensor's elements to keep (at least one)."""

    def __post_init__(self) -> None:
        if self.chunk < 0:
            raise ValueError("chunk must be >= 0")
        if not 0.0 < self.topk_fraction <= 1.0:
            raise ValueError("topk_fraction must be in (0, 1]")


@dataclass(frozen=True, slots=True)
class EncodedTensor:
    """One tensor on the wire. ``data`` is codec-specific (see the module docstring)."""

    name: str
    shape: list[int]
    codec: Codec
    data: bytes
    scales: bytes = b""
    """float32 scales: one (per tensor) or ceil(size / chunk) (per chunk)."""
    chunk: int = 0
    indices: bytes = b""
    """topk: uint32 flat indices, strictly increasing."""


@dataclass(slots=True)
class ErrorFeedback:
    """Per-tensor residual of what lossy encoding dropped, added back before the next encode."""

    residual: Params = field(default_factory=dict)

    def compensate(self, delta: Mapping[str, np.ndarray]) -> Params:
        out: Params = {}
        for name, value in delta.items():
            res = self.residual.get(name)
            out[name] = value + res if res is not None and res.shape == value.shape else value
        return out

    def update(self, compensated: Mapping[str, np.ndarray], sent: Mapping[str, np.ndarray]) -> None:
        """Remember ``compensated - sent``: what the receiver will not see of this delta."""
        self.residual = {
            name: (compensated[name] - sent[name]).astype(np.float32, copy=False)
            for name in compensated
        }

    def encode(
        self, delta: Mapping[str, np.ndarray], spec: CodecSpec, rng: np.random.Generator
    ) -> list[EncodedTensor]:
        """Compensate, encode, and keep the new residual: the one call a device makes."""
        compensated = self.compensate(delta)
        encoded = encode_params(compensated, spec, rng)
        self.update(compensated, {t.name: decode_tensor(t) for t in encoded})
        return encoded


# -- encoding ---------------------------------------------------------------------------------


def encode_tensor(
    name: str, value: np.ndarray, spec: CodecSpec, rng: np.random.Generator
) -> EncodedTensor:
    # not ascontiguousarray: it turns a 0-d (scalar) parameter into shape (1,)
    arr = np.asarray(value, dtype=np.float32, order="C")
    shape = [int(d) for d in arr.shape]
    flat = arr.reshape(-1)
    if spec.codec is Codec.FLOAT32:
        return EncodedTensor(name, shape, Codec.FLOAT32, flat.astype(_LE_F32, copy=False).tobytes())
    if spec.codec is Codec.FLOAT16:
        return EncodedTensor(name, shape, Codec.FLOAT16, flat.astype(_LE_F16).tobytes())
    if spec.codec is Codec.INT8:
        q, scales = _quantize_int8(flat, spec.chunk, rng)
        return EncodedTensor(name, shape, Codec.INT8, q.tobytes(), scales.tobytes(), spec.chunk)
    if spec.codec is Codec.TOPK:
        k = max(1, math.ceil(flat.size * spec.topk_fraction)) if flat.size else 0
        if k >= flat.size:
            idx = np.arange(flat.size, dtype=_LE_U32)
        else:
            idx = np.sort(np.argpartition(np.abs(flat), flat.size - k)[flat.size - k:])
            idx = idx.astype(_LE_U32)
        q, scales = _quantize_int8(flat[idx], 0, rng)
        return EncodedTensor(name, shape, Codec.TOPK, q.tobytes(), scales.tobytes(), 0,
                             idx.tobytes())
    raise ValueError(f"unknown codec {spec.codec!r}")  # pragma: no cover


def encode_params(
    params: Mapping[str, np.ndarray], spec: CodecSpec, rng: np.random.Generator
) -> list[EncodedTensor]:
    return [encode_tensor(name, value, spec, rng) for name, value in params.items()]


def _quantize_int8(
    flat: np.ndarray, chunk: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    n = flat.size
    # a chunk longer than the tensor is one chunk: never pad to a size the task merely names
    size = min(chunk, max(n, 1)) if chunk > 0 else max(n, 1)
    n_chunks = max(1, math.ceil(n / size))
    padded = np.zeros(n_chunks * size, dtype=np.float32)
    padded[:n] = flat
    blocks = padded.reshape(n_chunks, size)
    peak = np.max(np.abs(blocks), axis=1)
    # a tiny peak's step would be subnormal (imprecise, or 0 and a division by zero): floor
    # it at the smallest normal float32, which keeps |scaled| <= 127 and the error <= step
    step = np.maximum(peak / np.float32(127.0), np.finfo(np.float32).tiny)
    scales = np.where(peak > 0, step, 1.0).astype(_LE_F32)
    scaled = blocks / scales[:, None]
    # stochastic rounding: E[q] == scaled, so quantisation adds noise but no bias
    floor = np.floor(scaled)
    q = floor + (rng.random(scaled.shape, dtype=np.float32) < (scaled - floor))
    q = np.clip(q, -127, 127).astype(np.int8).reshape(-1)[:n]
    return q, scales


# -- decoding ---------------------------------------------------------------------------------


def tensor_size(shape: list[int], limits: Limits = DEFAULT_LIMITS, path: str = "$") -> int:
    if len(shape) > limits.max_rank:
        raise ValidationError("rank too large", path=path, reason=Reason.BAD_SHAPE)
    size = 1
    extent = 1  # the product of the non-zero dimensions: numpy refuses a huge one even when
    # a zero dimension makes the tensor empty ("array is too big")
    for dim in shape:
        if dim < 0:
            raise ValidationError("negative dimension", path=path, reason=Reason.BAD_SHAPE)
        if dim > limits.max_tensor_elements:
            raise ValidationError("dimension too large", path=path, reason=Reason.TOO_LARGE)
        size *= dim
        extent *= max(dim, 1)
        if extent > limits.max_tensor_elements:
            raise ValidationError("tensor too large", path=path, reason=Reason.TOO_LARGE)
    return size


def decode_tensor(
    t: EncodedTensor, limits: Limits = DEFAULT_LIMITS, path: str = "$"
) -> np.ndarray:
    """Bytes → float32 array of ``t.shape``. Every length is checked against the shape first."""
    n = tensor_size(t.shape, limits, f"{path}.shape")

    def expect(buf: bytes, count: int, itemsize: int, what: str) -> None:
        if len(buf) != count * itemsize:
            raise ValidationError(
                f"{what} has {len(buf)} bytes, expected {count * itemsize}",
                path=f"{path}.{what}", reason=Reason.BAD_SHAPE,
            )

    if t.codec is Codec.FLOAT32:
        expect(t.data, n, 4, "data")
        return np.frombuffer(t.data, dtype=_LE_F32).astype(np.float32).reshape(t.shape)
    if t.codec is Codec.FLOAT16:
        expect(t.data, n, 2, "data")
        return np.frombuffer(t.data, dtype=_LE_F16).astype(np.float32).reshape(t.shape)
    if t.codec is Codec.INT8:
        if t.chunk < 0:
            raise ValidationError("negative chunk", path=f"{path}.chunk", reason=Reason.BAD_CODEC)
        expect(t.data, n, 1, "data")
        n_chunks = max(1, math.ceil(n / t.chunk)) if t.chunk else 1
        expect(t.scales, n_chunks, 4, "scales")
        q = np.frombuffer(t.data, dtype=np.int8).astype(np.float32)
        scales = np.frombuffer(t.scales, dtype=_LE_F32)
        # hostile scales (inf, NaN, huge) give non-finite values for screening to judge, not
        # warnings; a chunk longer than the tensor must not size the repeat
        with np.errstate(over="ignore", invalid="ignore"):
            if t.chunk:
                q *= np.repeat(scales, min(t.chunk, n))[:n]
            else:
                q *= scales[0]
        return q.reshape(t.shape)
    if t.codec is Codec.TOPK:
        k = len(t.indices) // 4
        if k > n:
            raise ValidationError("more indices than elements", path=f"{path}.indices",
                                  reason=Reason.BAD_SHAPE)
        expect(t.indices, k, 4, "indices")
        expect(t.data, k, 1, "data")
        expect(t.scales, 1, 4, "scales")
        idx = np.frombuffer(t.indices, dtype=_LE_U32)
        increasing = k < 2 or bool(np.all(np.diff(idx.astype(np.int64)) > 0))
        if k and (int(idx[-1]) >= n or not increasing):
            raise ValidationError("indices out of range or not increasing",
                                  path=f"{path}.indices", reason=Reason.BAD_SHAPE)
        out = np.zeros(n, dtype=np.float32)
        with np.errstate(over="ignore", invalid="ignore"):
            out[idx] = np.frombuffer(t.data, dtype=np.int8).astype(np.float32) * np.frombuffer(
                t.scales, dtype=_LE_F32)[0]
        return out.reshape(t.shape)
    raise ValidationError(f"unknown codec {t.codec!r}", path=f"{path}.codec",
                          reason=Reason.BAD_CODEC)  # pragma: no cover


def decode_params(
    tensors: list[EncodedTensor], limits: Limits = DEFAULT_LIMITS, path: str = "$.tensors"
) -> Params:
    """Decode a tensor list, bounding the count, total size and names before decoding any."""
    if len(tensors) > limits.max_tensors:
        raise ValidationError("too many tensors", path=path, reason=Reason.TOO_MANY_TENSORS)
    total = 0
    for i, t in enumerate(tensors):
        total += tensor_size(t.shape, limits, f"{path}[{i}].shape")
        if total > limits.max_total_elements:
            raise ValidationError("tensors too large in total", path=path,
                                  reason=Reason.TOO_LARGE)
    out: Params = {}
    for i, t in enumerate(tensors):
        if t.name in out:
            raise ValidationError(f"duplicate tensor {t.name!r}", path=f"{path}[{i}].name")
        out[t.name] = decode_tensor(t, limits, f"{path}[{i}]")
    return out


# -- bit-exact deltas between model versions ---------------------------------------------------


def xor_delta(old: Mapping[str, np.ndarray], new: Mapping[str, np.ndarray]) -> Params:
    """A lossless delta: the XOR of the float32 bit patterns (applying it is bit-exact, and
    unchanged high bits become zero bytes that zstd compresses well)."""
    if list(old) != list(new):
        raise ValueError("xor_delta needs the same tensor names in the same order")
    out: Params = {}
    for name, n in new.items():
        o = np.asarray(old[name], dtype=np.float32, order="C")
        nn = np.asarray(n, dtype=np.float32, order="C")
        if o.shape != nn.shape:
            raise ValueError(f"shape of {name!r} changed")
        out[name] = (o.view(np.uint32) ^ nn.view(np.uint32)).view(np.float32)
    return out


def apply_xor_delta(base: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray]) -> Params:
    """Inverse of :func:`xor_delta`; raises ``ValueError`` when the delta does not fit ``base``."""
    if list(base) != list(delta):
        raise ValueError("delta and base have different tensors")
    out: Params = {}
    for name, b in base.items():
        bb = np.asarray(b, dtype=np.float32, order="C")
        d = np.asarray(delta[name], dtype=np.float32, order="C")
        if bb.shape != d.shape:
            raise ValueError(f"shape of {name!r} differs")
        out[name] = (bb.view(np.uint32) ^ d.view(np.uint32)).view(np.float32)
    return out


def params_digest(params: Mapping[str, np.ndarray]) -> bytes:
    """SHA-256 over names, shapes and float32 bytes: the identity of a set of weights."""
    h = hashlib.sha256()
    for name, value in params.items():
        arr = np.asarray(value, dtype=_LE_F32, order="C")
        h.update(name.encode())
        h.update(repr(tuple(arr.shape)).encode())
        h.update(arr.tobytes())
    return h.digest()
