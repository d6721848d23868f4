"""Exactly-once storage of the transitions robots stream in, as episodes in the dataset format.

    STORAGE/dataset/  the robots' episodes (robot_node/dataset.py format), appended as they end
    STORAGE/wal/      write-ahead log: every accepted transition as it arrived, before its ACK
    STORAGE/done/     which episode went to which dataset index (or was refused)

A transition is acknowledged only once it is in the write-ahead log, so a trainer killed at any
moment has everything it acknowledged. Transitions are keyed by (robot, episode, step): a
robot's resend after a lost ACK is a duplicate whether its episode is still pending or already
in the dataset. A writer thread appends an episode once its last step and every step before it
are in. The done log names the dataset index *before* the episode is written; on restart, an
index whose manifest entry is not this robot's episode means that write did not finish, and
it is done again. Write-ahead segments whose episodes are all written (or refused) are deleted;
an episode the disk refuses to write is retried and keeps its segments.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import numpy as np

from robot_node.counters import Counters
from robot_node.dataset import MANIFEST_NAME, Dataset, DatasetError, DatasetWriter, Episode, EpisodeRecord
from robot_node.link_interface import Transition
from robot_node.protocol import DecodedItem, ProtocolError, Specs, decode_item
from robot_node.record_log import RecordFormatError, SegmentLog, blob_record, read_blob_record
from robot_node.spec import ActionSpec, ObservationSpec

log = logging.getLogger(__name__)

WRITE_RETRY_S = 1.0  # between attempts to write an episode while the disk refuses

EpisodeKey = tuple[str, str]  # (robot id, episode id)
Batch = tuple[str, str, list[DecodedItem]]  # (robot id, image codec, decoded transitions) of one message
OnEpisode = Callable[[Episode, EpisodeRecord], None]


class StoreError(Exception):
    """The storage directory cannot be used as configured."""


@dataclass
class _Pending:
    steps: dict[int, Transition] = field(default_factory=dict)
    last: int | None = None  # the step that ends the episode, once it has arrived
    updated: float = field(default_factory=time.monotonic)

    def complete(self) -> bool:
        return self.last is not None and all(i in self.steps for i in range(self.last + 1))


class TransitionStore:
    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        observation_spec: ObservationSpec,
        action_spec: ActionSpec,
        task: str,
        env_id: str,
        max_episode_steps: int,
        sync: bool = True,
        max_steps: int = 100_000,
        max_queued_episodes: int = 32,
        abandon_after_s: float = 600.0,
        wal_segment_bytes: int = 64 << 20,
        on_episode: OnEpisode | None = None,
    ) -> None:
        """`sync` fsyncs the log before acknowledging (survives power loss, not only kill -9);
        `max_steps` bounds one episode; `max_queued_episodes` finished episodes may wait for the
        writer before the store reports itself `busy`; an episode with no new step for
        `abandon_after_s` (its robot restarted mid-episode) is kept up to its first gap."""
        self.root = Path(root)
        self.specs = Specs(observation_spec, action_spec)
        self.max_steps = max_steps
        self.max_queued_episodes = max_queued_episodes
        self.abandon_after_s = abandon_after_s
        self.on_episode = on_episode
        self.counters = Counters(("stored", "duplicates", "episodes_written", "episodes_salvaged", "episodes_refused", "pending_episodes", "write_errors"))
        # The logs first: each holds its directory's lock, so a second trainer on this storage
        # stops here (LogInUseError) before it touches the dataset.
        self._done_log = SegmentLog(self.root / "done", segment_bytes=1 << 40, sync=sync)
        try:
            self._wal = SegmentLog(self.root / "wal", segment_bytes=wal_segment_bytes, sync=sync)
        except OSError:
            self._done_log.close()
            raise
        self._lock = threading.Lock()
        self._pending: dict[EpisodeKey, _Pending] = {}
        self._writing: set[EpisodeKey] = set()
        self._done: set[EpisodeKey] = set()
        self._segment_episodes: dict[int, set[EpisodeKey]] = {}
        try:
            self._writer = self._open_dataset(task, env_id, max_episode_steps)
            self._recover()
        except (StoreError, DatasetError, OSError):
            self._wal.close()
            self._done_log.close()
            raise
        self._queue: queue.Queue[tuple[EpisodeKey, list[Transition]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._write_loop, name="episode-writer", daemon=True)
        self._thread.start()
        for key in [k for k, p in self._pending.items() if p.complete()]:
            self._hand_over(key)

    @classmethod
    def like(cls, root: str | os.PathLike[str], template: Dataset, **options) -> TransitionStore:
        """A store whose robots' episodes share the task, env id, episode length and specs of
        `template` (the offline dataset); `options` as for the constructor."""
        return cls(
            root,
            observation_spec=template.observation_spec,
            action_spec=template.action_spec,
            task=template.task,
            env_id=template.env_id,
            max_episode_steps=template.max_episode_steps,
            **options,
        )

    @property
    def dataset_dir(self) -> Path:
        return self.root / "dataset"

    @property
    def busy(self) -> bool:
        """The writer is behind: take no new transitions until it catches up (memory stays bounded)."""
        return self._queue.qsize() >= self.max_queued_episodes

    def add(self, batches: list[Batch]) -> list[tuple[list[int], list[int]]]:
        """Log decoded transitions, all batches with one write (and one fsync), and return each
        batch's (acknowledged, refused) sequence numbers.

        Duplicates are acknowledged without being stored again. OSError from the disk
        propagates: then nothing is acknowledged and the robots send the batches again.
        """
        fresh: list[tuple[str, str, DecodedItem]] = []
        results, duplicates, seen = [], 0, set()
        with self._lock:
            for robot_id, codec, items in batches:
                refused = []
                for d in items:
                    key, step = (robot_id, d.transition.episode_id), d.transition.step
                    pending = self._pending.get(key)
                    if step >= self.max_steps:
                        refused.append(d.seq)
                    elif key in self._done or key in self._writing or (key, step) in seen or (pending is not None and step in pending.steps):
                        duplicates += 1
                    else:
                        seen.add((key, step))
                        fresh.append((robot_id, codec, d))
                results.append(([d.seq for d in items if d.seq not in refused], refused))
        records = [blob_record([robot_id, codec, d.item], d.frames) for robot_id, codec, d in fresh]
        locations = self._wal.append(records) if records else []
        with self._lock:
            touched: dict[EpisodeKey, None] = {}  # in arrival order, so episodes are written in the order they ended
            for (robot_id, _, d), location in zip(fresh, locations):
                key = (robot_id, d.transition.episode_id)
                self._add_pending(key, d.transition)
                self._segment_episodes.setdefault(location.segment, set()).add(key)
                touched[key] = None
            for key in touched:
                if self._pending[key].complete():
                    self._hand_over(key)
            self.counters.set("pending_episodes", len(self._pending))
        self.counters.inc("stored", len(fresh))
        self.counters.inc("duplicates", duplicates)
        return results

    def housekeeping(self) -> None:
        """Close episodes whose robot went quiet mid-episode, and delete finished log segments."""
        now = time.monotonic()
        with self._lock:
            stale = [k for k, p in self._pending.items() if now - p.updated > self.abandon_after_s]
            for key in stale:
                log.warning("episode %s of robot %s got no step for %.0f s; keeping it up to its first gap", key[1], key[0], self.abandon_after_s)
                self._hand_over(key)
        self._collect()

    def close(self) -> None:
        """Finish the episodes already handed to the writer, then close the logs."""
        self._queue.put(None)
        self._thread.join()
        self._wal.close()
        self._done_log.close()

    # ------------------------------------------------------------------ internals

    def _open_dataset(self, task: str, env_id: str, max_episode_steps: int) -> DatasetWriter:
        if not (self.dataset_dir / MANIFEST_NAME).exists():
            return DatasetWriter(
                self.dataset_dir,
                task=task,
                env_id=env_id,
                observation_spec=self.specs.observation,
                action_spec=self.specs.action,
                max_episode_steps=max_episode_steps,
                meta={"recorded_by": "o2o_rl trainer link"},
            )
        writer = DatasetWriter.append_to(self.dataset_dir)
        existing = (writer.dataset.observation_spec, writer.dataset.action_spec)
        if existing != (self.specs.observation, self.specs.action):
            raise StoreError(f"{self.dataset_dir} holds episodes for {existing[0]}, {existing[1]}; this trainer expects {self.specs.observation}, {self.specs.action}")
        return writer

    def _recover(self) -> None:
        records = self._writer.dataset.records
        for _, payload in self._done_log.replay():
            robot_id, episode_id, index = msgpack.unpackb(payload, raw=False)
            if index is None or (index < len(records) and _holds(records[index], robot_id, episode_id)):  # refused, or written
                self._done.add((robot_id, episode_id))
        replayed = 0
        for location, payload in self._wal.replay():
            try:
                (robot_id, codec, item), frames = read_blob_record(payload)
            except RecordFormatError as exc:
                raise StoreError(f"{self.root / 'wal'}: {exc}; move the storage aside") from None
            key = (robot_id, item["episode"])
            self._segment_episodes.setdefault(location.segment, set()).add(key)
            if key in self._done:
                continue
            try:
                self._add_pending(key, decode_item(item, frames, codec, self.specs))
                replayed += 1
            except ProtocolError as exc:  # it was checked on arrival; only a changed spec gets here
                log.error("write-ahead log record of %s no longer decodes: %s", key, exc)
        if replayed:
            log.info("recovered %d logged transitions of %d unfinished episodes", replayed, len(self._pending))
        self.counters.set("pending_episodes", len(self._pending))

    def _add_pending(self, key: EpisodeKey, transition: Transition) -> None:
        pending = self._pending.setdefault(key, _Pending())
        pending.steps.setdefault(transition.step, transition)
        pending.updated = time.monotonic()
        if transition.is_last:
            pending.last = transition.step if pending.last is None else min(pending.last, transition.step)

    def _hand_over(self, key: EpisodeKey) -> None:
        """Move an episode to the writer: complete, or cut at its first missing step."""
        pending = self._pending.pop(key)
        if pending.complete():
            end = pending.last
        else:
            end = _first_gap(pending.steps)
            self.counters.inc("episodes_salvaged")
        steps = [pending.steps[i] for i in range(end + 1)] if end >= 0 else []
        if steps and not steps[-1].is_last:  # salvaged: the last step we have becomes the final observation
            final = steps.pop()
            if steps:
                steps[-1] = dataclasses.replace(steps[-1], truncated=True, next_image=final.image, next_state=final.state)
        self._writing.add(key)
        self._queue.put((key, steps))

    def _write_loop(self) -> None:
        while (job := self._queue.get()) is not None:
            key, steps = job
            try:
                self._write(key, steps)
            except OSError as exc:  # the disk, not the episode: try again; its log segments stay
                self.counters.inc("write_errors")
                log.error("could not write episode %s of robot %s (%s); retrying in %.0f s", key[1], key[0], exc, WRITE_RETRY_S)
                self._queue.put(job)  # behind a close()'s None: then the restart writes it from the log
                time.sleep(WRITE_RETRY_S)
            except Exception:  # a bug with one episode must not stop the writer
                log.exception("could not write episode %s of robot %s; refusing it", key[1], key[0])
                try:
                    self._refuse(key)
                except OSError:
                    log.exception("could not record the refusal of episode %s; it is retried after a restart", key[1])

    def _write(self, key: EpisodeKey, steps: list[Transition]) -> None:
        try:
            if not steps:
                raise DatasetError("no complete transition")
            episode = _episode(steps)
            episode.validate(self.specs.observation, self.specs.action)
        except DatasetError as exc:
            log.warning("episode %s of robot %s refused: %s", key[1], key[0], exc)
            self.counters.inc("episodes_refused")
            self._refuse(key)
            return
        self._log_done(key, len(self._writer.dataset))  # intent first: a crash from here on is redone
        success = bool((episode.rewards > 0).any())  # earned reward at some step: the simulator datasets' rule (sparse tasks)
        record = self._writer.add(episode, source="robot", success=success, robot_id=key[0], episode_id=key[1])
        self._mark_done(key)  # only now may its log segments go
        self.counters.inc("episodes_written")
        if self.on_episode is not None:
            try:
                self.on_episode(episode, record)
            except Exception:
                log.exception("on_episode callback failed for episode %s", key[1])

    def _log_done(self, key: EpisodeKey, index: int | None) -> None:
        """Record durably that the episode is refused (None) or is being written at `index`;
        on restart the manifest tells whether that write finished (`_holds`)."""
        self._done_log.append([[msgpack.packb([key[0], key[1], index])]])

    def _refuse(self, key: EpisodeKey) -> None:
        self._log_done(key, None)
        self._mark_done(key)

    def _mark_done(self, key: EpisodeKey) -> None:
        with self._lock:
            self._done.add(key)
            self._writing.discard(key)

    def _collect(self) -> None:
        with self._lock:
            finished = [s for s, keys in self._segment_episodes.items() if s != self._wal.active and keys <= self._done]
            for segment in finished:
                self._wal.delete(segment)
                del self._segment_episodes[segment]


def _holds(record: EpisodeRecord, robot_id: str, episode_id: str) -> bool:
    """Whether the dataset's episode `record` is this robot's episode. After a crash the same
    index may have gone to another episode, so the index alone does not say; records written
    before robot ids were recorded only have their index to go by."""
    return record.robot_id is None or (record.robot_id, record.episode_id) == (robot_id, episode_id)


def _first_gap(steps: dict[int, Transition]) -> int:
    """The last step of the run 0, 1, 2, ... that has no hole (-1 if step 0 is missing)."""
    end = -1
    while end + 1 in steps:
        end += 1
    return end


def _episode(steps: list[Transition]) -> Episode:
    last = steps[-1]
    return Episode(
        frames=np.stack([t.image for t in steps] + [last.next_image]),
        states=np.stack([t.state for t in steps] + [last.next_state]).astype(np.float32),
        actions=np.stack([t.action for t in steps]).astype(np.float32),
        rewards=np.array([t.reward for t in steps], np.float32),
        terminals=np.array([t.terminal for t in steps], bool),
        truncations=np.array([t.truncated for t in steps], bool),
        policy_versions=np.array([t.policy_version for t in steps], np.int64),
    )
