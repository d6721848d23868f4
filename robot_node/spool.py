"""The robot's bounded on-disk spool of transitions the trainer has not acknowledged yet.

Each transition is written once, encoded as it travels, under a sequence number; the
trainer's acknowledgements are appended as small records, so a restarted node replays the
log and knows exactly which transitions still have to go. The newest transitions are also kept
in memory (up to `recent_bytes`) until they are first sent, so streaming at full rate never
reads back what it has just written; a resend reads the disk. When the spool exceeds its size the
oldest segment is deleted with whatever it still held: counted, logged, and never a reason to
block the control loop.
"""

from __future__ import annotations

import logging
import os
import struct
from collections import Counter

import numpy as np

from robot_node.protocol import EncodedTransition
from robot_node.record_log import Location, RecordFormatError, SegmentLog, blob_record, is_blob_record, read_blob_record

TRANSITION, ACKS = b"T", b"A"
SEQ = struct.Struct("<Q")
SEGMENTS = 8  # the size bound is enforced by deleting one of about this many segments
RECENT_BYTES = 32 << 20

log = logging.getLogger(__name__)


class Spool:
    def __init__(self, directory: str | os.PathLike[str], *, max_bytes: int = 1 << 30, sync: bool = False, recent_bytes: int = RECENT_BYTES) -> None:
        self.max_bytes = max_bytes
        self.recent_bytes = recent_bytes
        self._log = SegmentLog(directory, segment_bytes=max(1 << 16, max_bytes // SEGMENTS), sync=sync)  # or LogInUseError
        self._unacked: dict[int, Location] = {}  # in sequence order
        self._recent: dict[int, EncodedTransition] = {}  # appended, not yet sent: in sequence order
        self._recent_size = 0
        self._live: Counter[int] = Counter()  # unacknowledged records per segment
        self.dropped = 0  # unacknowledged transitions lost to the size bound
        self.next_seq = 0
        for location, payload in self._log.replay():
            if payload[:1] == TRANSITION:
                if not is_blob_record(payload[1 + SEQ.size :]):
                    self._log.close()
                    raise RecordFormatError(f"spool {directory}: a transition in a format this version does not read (written by another version of o2o_rl?); move the spool aside")
                (seq,) = SEQ.unpack_from(payload, 1)
                self._unacked[seq] = location
                self._live[location.segment] += 1
                self.next_seq = max(self.next_seq, seq + 1)
            elif payload[:1] == ACKS:
                self._forget(np.frombuffer(payload[1:], "<u8").tolist())
        self._collect()
        if self._unacked:
            log.info("spool %s: %d unacknowledged transitions from before the restart", directory, len(self._unacked))

    def __len__(self) -> int:
        return len(self._unacked)

    @property
    def size_bytes(self) -> int:
        return self._log.size_bytes

    def append(self, batch: list[EncodedTransition]) -> list[int]:
        """Store transitions under new sequence numbers (one writev); the numbers come back."""
        seqs = list(range(self.next_seq, self.next_seq + len(batch)))
        records = [[TRANSITION + SEQ.pack(seq), *blob_record(e.item, e.frames)] for seq, e in zip(seqs, batch)]
        for seq, location, encoded in zip(seqs, self._log.append(records), batch):
            self._unacked[seq] = location
            self._live[location.segment] += 1
            self._remember(seq, encoded)
        self.next_seq += len(batch)
        self._enforce_bound()
        return seqs

    def get(self, seq: int) -> EncodedTransition | None:
        """A spooled transition, or None once it is acknowledged or dropped."""
        location = self._unacked.get(seq)
        if location is None:
            return None
        encoded = self._recent.pop(seq, None)
        if encoded is not None:
            self._recent_size -= _size(encoded)
            return encoded
        item, frames = read_blob_record(self._log.read(location)[1 + SEQ.size :])
        return EncodedTransition(item, frames)

    def unacked(self) -> list[int]:
        return list(self._unacked)

    def ack(self, seqs: list[int]) -> int:
        """Forget acknowledged transitions (durably); returns how many were still spooled."""
        known = [s for s in seqs if s in self._unacked]
        if known:
            self._log.append([[ACKS + np.asarray(known, "<u8").tobytes()]])
            self._forget(known)
            self._collect()
        return len(known)

    def close(self) -> None:
        self._log.close()

    def _remember(self, seq: int, encoded: EncodedTransition) -> None:
        self._recent[seq] = encoded
        self._recent_size += _size(encoded)
        while self._recent_size > self.recent_bytes:  # a long backlog: its oldest part is read back when sent
            self._recent_size -= _size(self._recent.pop(next(iter(self._recent))))

    def _forget(self, seqs: list[int]) -> None:
        for seq in seqs:
            location = self._unacked.pop(seq, None)
            if location is not None:
                self._live[location.segment] -= 1
            encoded = self._recent.pop(seq, None)
            if encoded is not None:
                self._recent_size -= _size(encoded)

    def _collect(self) -> None:
        """Delete old segments that hold nothing unacknowledged."""
        for segment in self._log.segments:
            if segment != self._log.active and self._live[segment] <= 0:
                self._log.delete(segment)
                self._live.pop(segment, None)

    def _enforce_bound(self) -> None:
        while self._log.size_bytes > self.max_bytes and len(self._log.segments) > 1:
            oldest = self._log.segments[0]
            lost = [seq for seq, loc in self._unacked.items() if loc.segment == oldest]
            self._forget(lost)
            self._log.delete(oldest)
            self._live.pop(oldest, None)
            self.dropped += len(lost)
            log.warning("spool is full (%d MB): dropped the %d oldest unacknowledged transitions", self.max_bytes >> 20, len(lost))


def _size(encoded: EncodedTransition) -> int:
    return sum(len(f) for f in encoded.frames)
