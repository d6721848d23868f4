"""Append-only logs of CRC-framed records in numbered segment files.

The robot's spool and the trainer's write-ahead log are both such a log. Records are appended
in batches with `writev` straight from their parts (a header and the image bytes as they
arrived: nothing is copied into one buffer first), so a process killed with kill -9 leaves at
worst a torn tail in its last segment: the CRC catches it and reading stops there. A reopened log never
appends to an old segment; it starts a new one, so a torn tail is never followed by good data.
Whole segments are the unit of deletion, which keeps disk use bounded without compaction.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
from isal.isal_zlib import crc32  # zlib's CRC-32, several times faster (carry-less multiply)

FRAME = struct.Struct("<II")  # payload length, crc32 of the payload
HEAD = struct.Struct("<BI")  # a blob record's format and the length of its msgpack head
BLOB_FORMAT = 1
SEGMENT_SUFFIX = ".log"
LOCK_NAME = "LOCK"  # held (flock) by the process that has the log open; the kernel frees it when that process dies
IOV_MAX = 1024  # parts per writev call (POSIX guarantees at least 16; Linux allows 1024)

Record = Sequence[bytes]  # a record's payload is the concatenation of its parts

log = logging.getLogger(__name__)


class RecordFormatError(ValueError):
    """A record this version does not read (written by another version): refused, not misread."""


class LogInUseError(OSError):
    """Another process has the log open: two writers would interleave their records."""


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
        self._lock_fd = _lock(self.directory / LOCK_NAME)
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
                if end > len(data) or crc32(data[start:end]) != crc:
                    break
                yield Location(segment, start, length), data[start:end]
                offset = end
            if offset != len(data):
                log.warning("%s: %d bytes after offset %d are torn or damaged; ignored", self._path(segment), len(data) - offset, offset)

    def append(self, records: list[Record]) -> list[Location]:
        """Write records (few system calls, no joining); their locations come back in order."""
        if self._sizes[self.active] >= self.segment_bytes:
            self._open(self.active + 1)
        offset = self._sizes[self.active]
        parts: list[bytes] = []
        locations = []
        for record in records:
            length = crc = 0
            for part in record:
                length += len(part)
                crc = crc32(part, crc)
            parts.append(FRAME.pack(length, crc))
            parts += record
            locations.append(Location(self.active, offset + FRAME.size, length))
            offset += FRAME.size + length
        fd = self._fds[self.active]
        try:
            _write_all(fd, parts)
            if self.sync:
                os.fdatasync(fd)
        except OSError:
            self._cut_back(fd)
            raise
        self._sizes[self.active] = offset
        return locations

    def _cut_back(self, fd: int) -> None:
        """After a failed append, remove what part of it reached the file, so the records written
        next are not stranded behind torn bytes (replay stops at the first damaged record). If
        even that fails, the next append starts a new segment."""
        try:
            os.ftruncate(fd, self._sizes[self.active])
        except OSError:
            self._sizes[self.active] = max(self._sizes[self.active], self.segment_bytes)

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
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None

    def _open(self, segment: int) -> None:
        self._fds[segment] = os.open(self._path(segment), os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        if self.sync:  # the new file's name must survive power loss too, not only the bytes fsynced into it
            directory = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        self._sizes[segment] = 0
        self.active = segment

    def _path(self, segment: int) -> Path:
        return self.directory / f"{segment:08d}{SEGMENT_SUFFIX}"


def _write_all(fd: int, parts: list[bytes]) -> None:
    """writev until every byte is down (a short write resumes where it stopped)."""
    parts = [p for p in parts if len(p)]
    i = 0
    while i < len(parts):
        written = os.writev(fd, parts[i : i + IOV_MAX])
        while written:
            if written >= len(parts[i]):
                written -= len(parts[i])
                i += 1
            else:
                parts[i], written = memoryview(parts[i])[written:], 0


def blob_record(head: Any, blobs: Sequence[bytes]) -> list[bytes]:
    """A record of a msgpack value and binary blobs (images), as parts: the blobs are written
    as they are instead of being copied into a msgpack buffer."""
    packed = msgpack.packb([head, [len(b) for b in blobs]], use_bin_type=True)
    return [HEAD.pack(BLOB_FORMAT, len(packed)), packed, *blobs]


def is_blob_record(payload: bytes) -> bool:
    return payload[:1] == bytes([BLOB_FORMAT])


def read_blob_record(payload: bytes) -> tuple[Any, list[bytes]]:
    """The head and blobs of a `blob_record` payload."""
    if not is_blob_record(payload) or len(payload) < HEAD.size:
        raise RecordFormatError("a record in a format this version does not read (written by another version of o2o_rl?)")
    _, size = HEAD.unpack_from(payload)
    head, lengths = msgpack.unpackb(payload[HEAD.size : HEAD.size + size], raw=False)
    blobs, offset = [], HEAD.size + size
    for length in lengths:
        blobs.append(payload[offset : offset + length])
        offset += length
    return head, blobs


def _lock(path: Path) -> int:
    """An exclusive lock on `path`, holding the owner's pid, or LogInUseError naming the owner."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise LogInUseError(f"{path.parent} is already in use by pid {owner}; give each robot and each trainer its own directory") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
