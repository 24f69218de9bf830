"""Keep a tile's freed memory for the next tile instead of handing it back to the system.

glibc's malloc serves blocks over its mmap threshold (at most 32 MB by default) with fresh mmaps and unmaps them
when freed. The degradation network's tile activations are such blocks, so every tile of a large photo faulted its
memory in again page by page: a third of `flowsr degrade`'s CPU time went to the kernel. Raising the mmap and trim
thresholds lets the heap keep and reuse them. Blocks larger than `KEEP_BYTES` (a large photo's full-size buffers)
are still mapped and returned, so they cannot pin the heap; `flowsr sr`, whose tiles gain nothing from it and whose
full-size buffers would, leaves the defaults. Only the `flowsr degrade` command sets this (it owns its process);
off glibc nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
KEEP_BYTES = 512 << 20  # blocks up to 512 MiB come from the heap, and up to 512 MiB of free heap is kept


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def keep_freed_memory() -> bool:
    """Set glibc's thresholds for this process; False where there is no glibc (macOS, Windows, musl)."""
    libc = _glibc()
    return libc is not None and bool(
        libc.mallopt(M_MMAP_THRESHOLD, KEEP_BYTES) and libc.mallopt(M_TRIM_THRESHOLD, KEEP_BYTES)
    )


def release_free_memory() -> None:
    """Hand the heap's free memory back now (glibc's malloc_trim): after the tiles, before full-size buffers are
    made, so what the tiles kept does not add to the peak."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
