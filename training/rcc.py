"""Qt resource archives (.rcc): the files a Qt application bundles in one file, read with the standard library.

Layout (Qt's rcc, format versions 1 to 3, all integers big-endian):
  header   b"qres", version, tree offset, data offset, names offset (u32 each); version 3 adds a u32 of flags
  tree     one entry per file or folder, entry 0 the root folder: name offset (u32), flags (u16), then
           a folder:  child count (u32), index of the first child entry (u32)
           a file:    territory (u16), language (u16), data offset (u32)
           from version 2 on, each entry ends with its modification time (u64)
  names    at a name offset: length in UTF-16 units (u16), hash (u32), the UTF-16BE characters
  data     at a data offset: size (u32), the bytes; zlib-compressed entries start with the uncompressed size (u32)
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

from flowsr.core.errors import FlowsrError

COMPRESSED, DIRECTORY, COMPRESSED_ZSTD = 0x1, 0x2, 0x4  # entry flags


class RccError(FlowsrError):
    """A file that is not a readable Qt resource archive."""


def read_rcc(source: str | os.PathLike | bytes) -> dict[str, bytes]:
    """Every file in the archive (a path or its bytes): {"folder/name": content}, in the archive's order."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    where = "" if isinstance(source, bytes) else f"{source}: "
    try:
        return _Archive(data).files()
    except (struct.error, UnicodeDecodeError, zlib.error, IndexError) as e:
        raise RccError(f"{where}truncated or corrupt Qt resource archive ({type(e).__name__}: {e})") from e
    except RccError as e:
        raise RccError(f"{where}{e}") from e


class _Archive:
    def __init__(self, data: bytes):
        if data[:4] != b"qres":
            raise RccError("not a Qt resource archive (no 'qres' magic)")
        self.data = data
        self.version, self.tree, self.payload, self.names = struct.unpack_from(">4I", data, 4)
        if not 1 <= self.version <= 3:
            raise RccError(f"Qt resource archive format version {self.version} is not supported (1 to 3 are)")
        self.entry_size = 14 if self.version == 1 else 22

    def files(self) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        pending = [(0, "")]  # (entry index, its path); the root folder has no name
        seen = set()
        while pending:
            index, path = pending.pop()
            if index in seen:
                raise RccError(f"entry {index} is reached twice (a cycle in the folder tree)")
            seen.add(index)
            offset = self.tree + index * self.entry_size
            name_offset, flags = struct.unpack_from(">IH", self.data, offset)
            if index:
                path = f"{path}/{self._name(name_offset)}" if path else self._name(name_offset)
            if flags & DIRECTORY:
                count, first = struct.unpack_from(">II", self.data, offset + 6)
                pending.extend((child, path) for child in reversed(range(first, first + count)))
            else:
                (data_offset,) = struct.unpack_from(">I", self.data, offset + 10)
                found[path] = self._content(data_offset, flags, path)
        return found

    def _name(self, offset: int) -> str:
        (length,) = struct.unpack_from(">H", self.data, self.names + offset)
        start = self.names + offset + 6  # after the length and the hash
        raw = self.data[start : start + 2 * length]
        if len(raw) != 2 * length:
            raise IndexError("a name runs past the end of the file")
        return raw.decode("utf-16-be")

    def _content(self, offset: int, flags: int, path: str) -> bytes:
        (size,) = struct.unpack_from(">I", self.data, self.payload + offset)
        start = self.payload + offset + 4
        content = self.data[start : start + size]
        if len(content) != size:
            raise IndexError(f"{path}: its data runs past the end of the file")
        if flags & COMPRESSED_ZSTD:
            raise RccError(f"{path}: zstd-compressed entries are not supported (only zlib and stored ones)")
        if flags & COMPRESSED:
            (expected,) = struct.unpack_from(">I", content)
            content = zlib.decompress(content[4:])
            if len(content) != expected:
                raise RccError(f"{path}: decompressed to {len(content)} bytes, the archive says {expected}")
        return content
