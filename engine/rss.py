"""Resident memory of this process, read without torch (the solve's pycolmap child uses it too)."""

from __future__ import annotations

import sys
from pathlib import Path


def _proc_status_bytes(key: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` in bytes (Linux); None where there is no such file."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def current_rss_bytes() -> int:
    """This process's resident memory now (Linux; 0 where unknown)."""
    return _proc_status_bytes("VmRSS") or 0


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far, in bytes.

    Linux: ``VmHWM`` of the process's own memory map. ``ru_maxrss`` is not used there because it survives ``exec``:
    an engine started from Blender (or from a large pytest process) would report its parent's size.
    Elsewhere: ``ru_maxrss`` (bytes on macOS, KiB on the other Unixes); 0 where unknown (Windows)."""
    peak = _proc_status_bytes("VmHWM")
    if peak is not None:
        return peak
    try:
        import resource
    except ImportError:
        return 0
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(maxrss if sys.platform == "darwin" else maxrss * 1024)
