"""Atomic writes: a file or folder appears complete or not at all, and what was there before survives a failure.

Temporaries are named `.flowsr-{host}-{pid}-{random}.tmp` (short, whatever the target's name), so a run that was
killed (kill -9, power loss) leaves names that the next run recognizes and removes: those of this host whose
process is gone. Temporaries of live processes and of other hosts (a shared folder) are left alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import IO

_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]
# Not `.tmp.old`: atomic_directory's previous target during its swap, which a kill at that instant leaves as the
# only copy of the user's old folder.
_TEMPORARY = re.compile(r"^\.flowsr-([0-9a-f]{6})-(\d+)-[0-9a-f]{8}\.tmp$")


def _temporary_beside(path: Path) -> Path:
    return path.with_name(f".flowsr-{_HOST}-{os.getpid()}-{secrets.token_hex(4)}.tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(folder: str | Path) -> int:
    """Remove the temporaries that killed flowsr runs left under `folder` (recursively); returns how many."""
    removed = 0
    for root, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            match = _TEMPORARY.match(name)
            if match is None or match[1] != _HOST or _alive(int(match[2])):
                continue
            path = Path(root) / name
            with contextlib.suppress(OSError):
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
                removed += 1
        dirs[:] = [d for d in dirs if not d.startswith(".flowsr-")]
    return removed


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Write into a hidden temporary file beside `path`, flushed to disk, then renamed onto it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = _temporary_beside(path)
    try:
        with open(temp, mode.replace("w", "x")) as f:  # honours the umask, unlike tempfile.mkstemp's 0600
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # never mask the original error (temp may not exist)
            temp.unlink()
        raise


@contextlib.contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Fill the yielded staging folder; on success it replaces `target` (an old target is removed only after)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = _temporary_beside(target)
    staging.mkdir()  # honours the umask, unlike tempfile.mkdtemp's 0700
    try:
        yield staging
        if target.exists():
            old = staging.with_name(staging.name + ".old")
            os.replace(target, old)
            try:
                os.replace(staging, target)
            except BaseException:
                os.replace(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
