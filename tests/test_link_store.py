"""The trainer's transition store: exactly-once storage across duplicates and restarts."""

import dataclasses
import errno
import json
import os
import shutil
import threading

import msgpack
import numpy as np
import pytest

from robot_node.dataset import open_dataset
from robot_node import record_log
from robot_node.record_log import LogInUseError, SegmentLog
from robot_node.spec import ObservationSpec
from link_helpers import ACT, EPISODE_STEPS, OBS, check_episode, decoded, stored_steps, stream, transition, wait_for
from trainer.transition_store import StoreError, TransitionStore


def open_store(root, **overrides):
    options = {"observation_spec": OBS, "action_spec": ACT, "task": "t", "env_id": "e", "max_episode_steps": EPISODE_STEPS, "sync": False}
    return TransitionStore(root, **{**options, **overrides})


def add(store, robot_id, items):
    return store.add([(robot_id, "png", items)])[0]


def test_one_write_stores_batches_of_several_robots(tmp_path):
    store = open_store(tmp_path)
    results = store.add([("robot1", "png", decoded(stream(10))), ("robot2", "png", decoded(stream(5), first_seq=7))])
    assert results == [(list(range(10)), []), (list(range(7, 12)), [])]
    written(store, 1)
    store.close()
    assert store.counters["stored"] == 15 and store.counters["pending_episodes"] == 1


def written(store, n):
    wait_for(lambda: store.counters["episodes_written"] >= n, 10, f"{n} episodes written")


def test_duplicates_are_acknowledged_but_stored_once(tmp_path):
    seen = []
    store = open_store(tmp_path, on_episode=lambda episode, record: seen.append(record))
    items = decoded(stream(15))
    acked, refused = add(store, "robot1", items)
    assert acked == list(range(15)) and refused == []
    again, _ = add(store, "robot1", decoded(stream(15)))  # the robot resent everything
    assert again == list(range(15))
    written(store, 1)
    add(store, "robot1", decoded(stream(10)))  # resent after its episode was written
    store.close()

    assert store.counters["stored"] == 15 and store.counters["duplicates"] == 25
    assert stored_steps(tmp_path / "dataset") == {(0, s): 1 for s in range(EPISODE_STEPS)}
    check_episode(open_dataset(tmp_path / "dataset").read(0), 0)
    assert len(seen) == 1 and seen[0].source == "robot" and seen[0].success  # episode 0 ends with reward 1
    manifest = json.loads((tmp_path / "dataset" / "manifest.json").read_text())
    assert manifest["counts"]["episodes"] == 1
    line = manifest["episodes"][0]
    assert (line["robot_id"], line["episode_id"]) == ("robot1", items[0].transition.episode_id)
    assert (seen[0].robot_id, seen[0].episode_id) == ("robot1", items[0].transition.episode_id)
    assert seen[0] == open_dataset(tmp_path / "dataset").records[0]  # and read back as written


def test_an_episode_that_earned_reward_before_its_time_limit_is_a_success(tmp_path):
    """A node that does not end episodes on success (the simulator's setting) streams them to the
    time limit: reward mid-episode then a truncated last step is still a success, as in the
    simulator's own datasets; an episode without reward is not."""
    earned = [dataclasses.replace(t, reward=1.0 if t.step == 4 else 0.0, terminal=False, truncated=t.is_last) for t in stream(EPISODE_STEPS)]
    nothing = [dataclasses.replace(t, reward=0.0) for t in stream(EPISODE_STEPS, start=EPISODE_STEPS)]
    store = open_store(tmp_path)
    add(store, "robot1", decoded(earned + nothing))
    written(store, 2)
    store.close()
    assert [r.success for r in open_dataset(tmp_path / "dataset").records] == [True, False]


def test_same_episode_id_from_two_robots_are_two_episodes(tmp_path):
    store = open_store(tmp_path)
    add(store, "robot1", decoded(stream(10)))
    add(store, "robot2", decoded(stream(10)))
    written(store, 2)
    store.close()
    assert len(open_dataset(tmp_path / "dataset")) == 2


def test_a_restarted_store_resumes_pending_episodes_from_its_log(tmp_path):
    store = open_store(tmp_path)
    add(store, "robot1", decoded(stream(6)))  # episode 0, steps 0-5
    store.close()

    store = open_store(tmp_path)
    assert store.counters["pending_episodes"] == 1
    add(store, "robot1", decoded(stream(6)))  # resent: all duplicates now
    add(store, "robot1", decoded(stream(4, start=6), first_seq=6))
    written(store, 1)
    store.close()
    assert store.counters["stored"] == 4 and store.counters["duplicates"] == 6
    check_episode(open_dataset(tmp_path / "dataset").read(0), 0)


def test_an_episode_whose_dataset_write_was_interrupted_is_written_again_once(tmp_path):
    store = open_store(tmp_path)
    add(store, "robot1", decoded(stream(20)))
    written(store, 2)
    store.close()
    # Killed after the intent record but before the manifest named episode 1: roll it back.
    manifest_path = tmp_path / "dataset" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["episodes"] = manifest["episodes"][:1]
    manifest_path.write_text(json.dumps(manifest))

    store = open_store(tmp_path)
    written(store, 1)
    store.close()
    assert stored_steps(tmp_path / "dataset") == {(e, s): 1 for e in range(2) for s in range(EPISODE_STEPS)}
    check_episode(open_dataset(tmp_path / "dataset").read(1), 1)


def test_an_abandoned_episode_is_kept_up_to_its_first_gap(tmp_path):
    store = open_store(tmp_path, abandon_after_s=0.0)
    items = decoded(stream(7))  # steps 0-6 of episode 0 ...
    add(store, "robot1", items[:5] + items[6:])  # ... with step 5 missing
    store.housekeeping()
    wait_for(lambda: store.counters["episodes_salvaged"] == 1 and store.counters["episodes_written"] == 1, 10, "the salvaged episode")
    add(store, "robot1", decoded([transition(0, 5)], first_seq=5))  # too late: a duplicate
    store.close()

    episode = open_dataset(tmp_path / "dataset").read(0)
    assert episode.length == 4 and episode.truncations[-1] and not episode.terminals.any()
    np.testing.assert_array_equal(episode.frames[-1], transition(0, 4).image)  # step 4's frame closes it
    assert store.counters["duplicates"] == 1


def test_finished_log_segments_are_deleted(tmp_path):
    store = open_store(tmp_path, wal_segment_bytes=2_000)
    for start in range(0, 40, 5):
        add(store, "robot1", decoded(stream(5, start), first_seq=start))
    add(store, "robot1", decoded(stream(3, 40), first_seq=40))  # an unfinished episode stays
    written(store, 4)
    segments_before = len(list((tmp_path / "wal").glob("*.log")))
    store.housekeeping()
    remaining = list((tmp_path / "wal").glob("*.log"))
    assert segments_before > 2 and len(remaining) < segments_before
    store.close()
    store = open_store(tmp_path)  # what is left still holds the unfinished episode
    assert store.counters["pending_episodes"] == 1
    store.close()


def test_steps_beyond_the_limit_are_refused(tmp_path):
    store = open_store(tmp_path, max_steps=5)
    acked, refused = add(store, "robot1", decoded(stream(7)))
    assert acked == [0, 1, 2, 3, 4] and refused == [5, 6]
    store.close()


def test_a_store_refuses_storage_recorded_with_other_specs(tmp_path):
    open_store(tmp_path).close()
    with pytest.raises(StoreError, match="holds episodes for"):
        open_store(tmp_path, observation_spec=ObservationSpec((64, 64, 3), ("episode", "step")))


def test_a_log_in_a_format_this_version_does_not_read_is_refused_with_a_clear_error(tmp_path):
    store = open_store(tmp_path)
    add(store, "robot1", decoded(stream(3)))
    store.close()
    old = SegmentLog(tmp_path / "wal", segment_bytes=1 << 20)
    old.append([[msgpack.packb(["robot1", "png", {"episode": "e"}, [b"png"]])]])  # the previous format
    old.close()
    with pytest.raises(StoreError, match="format this version does not read"):
        open_store(tmp_path)


def test_a_second_store_on_the_same_storage_is_refused_and_the_first_keeps_working(tmp_path):
    store = open_store(tmp_path)
    add(store, "robot1", decoded(stream(EPISODE_STEPS)))
    with pytest.raises(LogInUseError, match=f"already in use by pid {os.getpid()}"):
        open_store(tmp_path)
    add(store, "robot1", decoded(stream(EPISODE_STEPS, start=EPISODE_STEPS), first_seq=EPISODE_STEPS))
    written(store, 2)
    store.close()
    open_store(tmp_path).close()  # the lock went with the first store
    assert stored_steps(tmp_path / "dataset") == {(e, s): 1 for e in range(2) for s in range(EPISODE_STEPS)}


# Faults that cannot be produced for real here (a full disk, a kill -9 at an exact instruction)
# are injected at the one call where they happen; everything else runs on real files.


def test_a_log_segment_stays_until_its_episode_is_in_the_dataset(tmp_path):
    live = tmp_path / "live"
    store = open_store(live, wal_segment_bytes=2_000)
    writing, release = threading.Event(), threading.Event()
    add_episode = store._writer.add

    def slow_add(*args, **kwargs):
        writing.set()
        release.wait(10)
        return add_episode(*args, **kwargs)

    store._writer.add = slow_add
    add(store, "robot1", decoded(stream(EPISODE_STEPS)))  # acknowledged, handed to the writer
    add(store, "robot1", decoded(stream(1, start=EPISODE_STEPS), first_seq=EPISODE_STEPS))  # a new log segment
    assert writing.wait(10)  # its intent is logged, the episode file and manifest not yet
    store.housekeeping()
    shutil.copytree(live, tmp_path / "killed")  # what a kill -9 at this moment leaves on disk
    release.set()
    store.close()

    restarted = open_store(tmp_path / "killed")
    written(restarted, 1)
    restarted.close()
    assert [r.episode_id for r in open_dataset(tmp_path / "killed" / "dataset").records] == ["ep00000"]


def test_two_crashes_in_a_row_lose_no_acknowledged_episode(tmp_path):
    def crash_back_to(episodes):  # the manifest as it was before the last writes finished
        path = tmp_path / "dataset" / "manifest.json"
        manifest = json.loads(path.read_text())
        manifest["episodes"] = manifest["episodes"][:episodes]
        path.write_text(json.dumps(manifest))

    a, b = stream(EPISODE_STEPS), stream(EPISODE_STEPS, start=EPISODE_STEPS)
    store = open_store(tmp_path)
    add(store, "robot1", decoded(b[:-1], first_seq=100))  # b starts first: first in the log
    add(store, "robot1", decoded(a))  # a ends first: dataset index 0
    written(store, 1)
    add(store, "robot1", decoded(b[-1:], first_seq=100 + EPISODE_STEPS - 1))  # index 1
    written(store, 2)
    store.close()
    crash_back_to(0)
    store = open_store(tmp_path)  # both again, in log order: b gets index 0, a index 1
    written(store, 2)
    store.close()
    crash_back_to(1)  # a's second write did not finish; its first intent (index 0) names b's slot now
    store = open_store(tmp_path)
    written(store, 1)
    store.close()
    assert sorted(r.episode_id for r in open_dataset(tmp_path / "dataset").records) == ["ep00000", "ep00001"]


def test_an_episode_the_disk_refuses_is_written_once_the_disk_takes_it(tmp_path):
    store = open_store(tmp_path)
    add_episode = store._writer.add

    def disk_full_once(*args, **kwargs):
        store._writer.add = add_episode
        raise OSError(errno.ENOSPC, "No space left on device")

    store._writer.add = disk_full_once
    assert add(store, "robot1", decoded(stream(EPISODE_STEPS)))[0] == list(range(EPISODE_STEPS))
    written(store, 1)
    store.close()
    assert store.counters["write_errors"] == 1 and store.counters["episodes_refused"] == 0
    assert stored_steps(tmp_path / "dataset") == {(0, s): 1 for s in range(EPISODE_STEPS)}


def test_a_failed_append_leaves_no_torn_bytes_before_the_next_records(tmp_path, monkeypatch):
    log = SegmentLog(tmp_path / "log", segment_bytes=1 << 20)
    log.append([[b"first"]])
    writev = os.writev

    def disk_fills_up(fd, parts):  # part of the batch reaches the file, then the disk is full
        monkeypatch.setattr(record_log.os, "writev", lambda *_: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
        return writev(fd, [bytes(parts[0])[:5]])

    monkeypatch.setattr(record_log.os, "writev", disk_fills_up)
    with pytest.raises(OSError):
        log.append([[b"lost" * 25]])
    monkeypatch.setattr(record_log.os, "writev", writev)
    log.append([[b"third"]])  # space again: a trainer would acknowledge this now
    log.close()
    reopened = SegmentLog(tmp_path / "log", segment_bytes=1 << 20)
    assert [payload for _, payload in reopened.replay()] == [b"first", b"third"]
    reopened.close()
