"""Append-only logs of CRC-framed records in numbered segment files.

The robot's spool and the trainer's write-ahead log are both such a log. A record is written
with one `write` call, so a process killed with kill -9 leaves at worst one torn record at the
end of its last segment: the CRC catches it and reading stops there. A reopened log never
appends to an old segment; it starts a new one, so a torn tail is never followed by good data.
Whole segments are the unit of deletion, which keeps disk use bounded without compaction.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

FRAME = struct.Struct("<II")  # payload length, crc32 of the payload
SEGMENT_SUFFIX = ".log"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Location:
    segment: int
    offset: int  # of the payload, after the frame header
    length: int


class SegmentLog:
    """A directory of segment files `00000001.log`, `00000002.log`, ... of framed records."""

    def __init__(self, directory: str | os.PathLike[str], *, segment_bytes: int, sync: bool = False) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self.sync = sync  # fsync after every append: survives power loss, not only a killed process
        self._sizes = {}
        for path in self.directory.glob("*" + SEGMENT_SUFFIX):
            if path.stem.isdigit():
                size = path.stat().st_size
                if size:
                    self._sizes[int(path.stem)] = size
                else:  # left by a run that wrote nothing
                    path.unlink()
        self._fds: dict[int, int] = {}
        self.active = max(self._sizes, default=0) + 1  # never append after a possibly torn tail
        self._open(self.active)

    @property
    def segments(self) -> list[int]:
        return sorted(self._sizes)

    @property
    def size_bytes(self) -> int:
        return sum(self._sizes.values())

    def segment_size(self, segment: int) -> int:
        return self._sizes[segment]

    def replay(self) -> Iterator[tuple[Location, bytes]]:
        """Every intact record in write order; reading a segment stops at its first damaged record."""
        for segment in self.segments:
            data = self._path(segment).read_bytes() if segment != self.active else b""
            offset = 0
            while offset + FRAME.size <= len(data):
                length, crc = FRAME.unpack_from(data, offset)
                start, end = offset + FRAME.size, offset + FRAME.size + length
                if end > len(data) or zlib.crc32(data[start:end]) != crc:
                    break
                yield Location(segment, start, length), data[start:end]
                offset = end
            if offset != len(data):
                log.warning("%s: %d bytes after offset %d are torn or damaged; ignored", self._path(segment), len(data) - offset, offset)

    def append(self, payloads: list[bytes]) -> list[Location]:
        """Write records with one write call; their locations come back in order."""
        if self._sizes[self.active] >= self.segment_bytes:
            self._open(self.active + 1)
        offset = self._sizes[self.active]
        parts, locations = [], []
        for payload in payloads:
            parts += (FRAME.pack(len(payload), zlib.crc32(payload)), payload)
            locations.append(Location(self.active, offset + FRAME.size, len(payload)))
            offset += FRAME.size + len(payload)
        view = memoryview(b"".join(parts))
        fd = self._fds[self.active]
        while view:
            view = view[os.write(fd, view) :]
        if self.sync:
            os.fdatasync(fd)
        self._sizes[self.active] = offset
        return locations

    def read(self, location: Location) -> bytes:
        fd = self._fds.get(location.segment)
        if fd is None:
            fd = self._fds[location.segment] = os.open(self._path(location.segment), os.O_RDONLY)
        return os.pread(fd, location.length, location.offset)

    def delete(self, segment: int) -> None:
        """Remove a whole segment (never the one being written)."""
        if segment == self.active:
            raise ValueError("cannot delete the active segment")
        fd = self._fds.pop(segment, None)
        if fd is not None:
            os.close(fd)
        self._path(segment).unlink(missing_ok=True)
        self._sizes.pop(segment, None)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def _open(self, segment: int) -> None:
        self._fds[segment] = os.open(self._path(segment), os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        self._sizes[segment] = 0
        self.active = segment

    def _path(self, segment: int) -> Path:
        return self.directory / f"{segment:08d}{SEGMENT_SUFFIX}"
