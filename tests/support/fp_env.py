"""The process's floating-point environment, reset between tests.

ONNX Runtime's ``session.set_denormal_as_zero`` (``edge_agent/trainer.py``, a real speed-up for
training) sets the flush-to-zero and denormals-are-zero bits on the thread that runs a
session. On a device that is a worker thread; a test that steps a model on the main thread
leaves the bits set for every later test, and hypothesis then refuses to draw floats (it
checks that subnormals survive). glibc's ``fesetenv(FE_DFL_ENV)`` restores the default
environment, SSE control register included.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_FE_DFL_ENV = ctypes.c_void_p(-1)  # glibc: ((const fenv_t *) -1)


def _libm() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("m")
    return ctypes.CDLL(name) if name else None


_LIBM = _libm()


def reset() -> None:
    """The default floating-point environment on this thread (a no-op off glibc)."""
    if _LIBM is not None:
        _LIBM.fesetenv(_FE_DFL_ENV)


def subnormals_survive() -> bool:
    tiny = sys.float_info.min
    return tiny / 2 != 0.0
