"""Choose MuJoCo's offscreen OpenGL backend before mujoco is imported.

mujoco picks its GL backend from MUJOCO_GL once, when it is first imported, and its default
(GLFW) needs a display that robots' off-board machines and CI runners do not have. So: honour
MUJOCO_GL when it is set; otherwise use EGL when an EGL device answers, else OSMesa (pure
software, pixel-identical here, shared/STACK_NOTES.md). `sim/__init__.py` calls this before
anything imports mujoco.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import warnings


def select_backend() -> str:
    """Set MUJOCO_GL if it is unset, and return the backend mujoco will use."""
    chosen = os.environ.get("MUJOCO_GL")
    if chosen:
        return chosen
    if "mujoco" in sys.modules:
        warnings.warn("mujoco was imported before sim with MUJOCO_GL unset; offscreen rendering may fail", stacklevel=2)
        return ""
    chosen = "egl" if egl_device_available() else "osmesa"
    os.environ["MUJOCO_GL"] = chosen
    return chosen


def egl_device_available() -> bool:
    """True when libEGL loads and lists at least one device (a GPU or Mesa's software one)."""
    name = ctypes.util.find_library("EGL") or "libEGL.so.1"
    try:
        egl = ctypes.CDLL(name)
    except OSError:
        return False
    egl.eglGetProcAddress.restype = ctypes.c_void_p
    egl.eglGetProcAddress.argtypes = [ctypes.c_char_p]
    address = egl.eglGetProcAddress(b"eglQueryDevicesEXT")
    if not address:
        return False
    query_devices = ctypes.CFUNCTYPE(ctypes.c_uint, ctypes.c_int, ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_int))(address)
    count = ctypes.c_int(0)
    devices = (ctypes.c_void_p * 4)()
    return bool(query_devices(4, devices, ctypes.byref(count))) and count.value > 0
