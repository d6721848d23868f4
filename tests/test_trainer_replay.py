"""Frame store and balanced replay: frames stored once, streamed episodes, ring wrap-around,
and the three replay modes."""

import numpy as np
import pytest

from robot_node.dataset import Episode
from robot_node.link_interface import Transition
from trainer.frame_store import FrameStore
from trainer.replay import Replay, ReplayConfig

SHAPE = (8, 8, 3)


def numbered_frame(value: int) -> np.ndarray:
    """A frame whose pixels encode an integer, so tests can tell which frame came back."""
    return np.full(SHAPE, value % 251, np.uint8)


def episode(start: int, steps: int) -> Episode:
    frames = np.stack([numbered_frame(start + i) for i in range(steps + 1)])
    return Episode(
        frames=frames,
        states=np.arange(start, start + steps + 1, dtype=np.float32)[:, None],
        actions=np.zeros((steps, 4), np.float32),
        rewards=np.arange(start, start + steps, dtype=np.float32),
        terminals=np.eye(1, steps, steps - 1, dtype=bool)[0],
        truncations=np.zeros(steps, bool),
    )


def step(episode_id: str, t: int, value: int, last: bool = False) -> Transition:
    return Transition(
        episode_id=episode_id,
        step=t,
        image=numbered_frame(value),
        state=np.array([value], np.float32),
        action=np.zeros(4, np.float32),
        reward=float(value),
        terminal=False,
        truncated=last,
        policy_version=0,
        stamp=0.0,
        next_image=numbered_frame(value + 1) if last else None,
        next_state=np.array([value + 1], np.float32) if last else None,
    )


def offline_store(episodes: int = 4, steps: int = 10) -> FrameStore:
    store = FrameStore(episodes * (steps + 1), SHAPE, 1, 4)
    for e in range(episodes):
        store.add_episode(episode(1000 * e, steps))
    return store


def test_next_observation_is_the_next_frame_and_frames_are_stored_once():
    store = offline_store(episodes=3, steps=40)
    assert store.num_transitions == 120 and store.num_frames == 123
    data = store.gather(store.transition_slots(), use_features=False)
    np.testing.assert_array_equal(data["next_state"], data["state"] + 1)
    np.testing.assert_array_equal(data["reward"], data["state"][:, 0])
    assert (data["next_obs"][:, 0, 0, 0] == (data["state"][:, 0] + 1) % 251).all()
    assert (data["discount"] > 0).sum() == 120 - 3  # the last step of each episode is terminal


def brute_force_n_step(
    rewards: list[float], terminal_last: bool, t: int, n: int, gamma: float
) -> tuple[float, float, int]:
    """(return, bootstrap discount, index of the bootstrap observation) of step t, by the book."""
    total, discount, k = 0.0, 1.0, t
    while k < len(rewards) and k < t + n:
        total += discount * rewards[k]
        discount *= 0.0 if terminal_last and k == len(rewards) - 1 else gamma
        k += 1
    return total, discount, k


def test_n_step_returns_follow_the_episode_and_stop_at_its_end():
    gamma, n = 0.5, 3
    terminal = episode(0, 6)  # rewards 0..5, the last step terminal
    truncated = episode(100, 5)  # rewards 100..104, cut by the time limit: bootstrap from its last frame
    truncated.terminals[:] = False
    truncated.truncations[-1] = True
    store = FrameStore(13, SHAPE, 1, 4)
    store.add_episode(terminal)
    store.add_episode(truncated)
    slots = store.transition_slots()
    data = store.gather(slots, use_features=False, n_step=n, gamma=gamma)
    for i, state in enumerate(data["state"][:, 0]):
        first = 0 if state < 100 else 100
        ep = terminal if first == 0 else truncated
        expected = brute_force_n_step(list(ep.rewards), bool(ep.terminals[-1]), int(state) - first, n, gamma)
        assert data["reward"][i] == pytest.approx(expected[0]) and data["discount"][i] == pytest.approx(expected[1])
        assert data["next_state"][i, 0] == first + expected[2]
        assert data["next_obs"][i, 0, 0, 0] == (first + expected[2]) % 251
    one_step = store.gather(slots, use_features=False, n_step=1, gamma=gamma)
    np.testing.assert_array_equal(one_step["next_state"], one_step["state"] + 1)
    np.testing.assert_allclose(one_step["discount"], np.where(one_step["state"][:, 0] == 5, 0.0, gamma))


def test_n_step_returns_of_a_streaming_episode_stop_at_its_newest_step():
    replay = Replay(ReplayConfig(mode="online_only"), FrameStore(100, SHAPE, 1, 4), None, warmup=1)
    for t in range(4):  # steps 0..3 arrived; step 3 waits for its next frame
        replay.add(step("e", t, 10 + t))
    data = replay.gather(replay.sample(200), use_features=False, n_step=5, gamma=0.5)
    assert set(data["state"][:, 0]) == {10, 11, 12}
    np.testing.assert_array_equal(data["next_state"][:, 0], 13)  # the newest frame held
    expected = {10: 10 + 0.5 * 11 + 0.25 * 12, 11: 11 + 0.5 * 12, 12: 12.0}
    np.testing.assert_allclose(data["reward"], [expected[s] for s in data["state"][:, 0]])
    np.testing.assert_allclose(data["discount"], 0.5 ** (13 - data["state"][:, 0]))


def test_a_stored_64px_transition_costs_at_most_1_1_frames():
    steps = 40
    store = FrameStore(steps + 1, (64, 64, 3), 6, 4)
    zeros = np.zeros
    store.add_episode(
        Episode(
            zeros((steps + 1, 64, 64, 3), np.uint8),
            zeros((steps + 1, 6), np.float32),
            zeros((steps, 4), np.float32),
            zeros(steps, np.float32),
            zeros(steps, bool),
            np.eye(1, steps, steps - 1, dtype=bool)[0],
        )
    )
    assert store.nbytes / store.num_transitions <= 1.1 * 64 * 64 * 3


def test_streamed_steps_of_interleaved_episodes_link_to_their_own_next_frames():
    replay = Replay(ReplayConfig(mode="online_only"), FrameStore(100, SHAPE, 1, 4), None, warmup=1)
    for t in range(5):  # two robots, steps interleaved
        replay.add(step("robot-a", t, 100 + t, last=t == 4))
        replay.add(step("robot-b", t, 200 + t, last=t == 4))
    assert replay.counters["transitions"] == 10 and replay.counters["episodes"] == 2
    data = replay.gather(replay.sample(500), use_features=False)
    np.testing.assert_array_equal(data["next_state"], data["state"] + 1)
    np.testing.assert_array_equal(data["next_obs"][:, 0, 0, 0], (data["state"][:, 0] + 1) % 251)


def test_gaps_and_duplicates_never_make_a_wrong_transition():
    replay = Replay(ReplayConfig(mode="online_only"), FrameStore(100, SHAPE, 1, 4), None, warmup=1)
    replay.add(step("e", 0, 10))
    replay.add(step("e", 0, 10))  # resent
    replay.add(step("e", 1, 11))
    replay.add(step("e", 0, 10))  # resent late
    replay.add(step("e", 3, 13))  # step 2 was lost: 1 -> 3 must not become a transition
    replay.add(step("e", 4, 14, last=True))
    replay.add(step("e", 4, 14, last=True))  # the finished episode's last step, resent
    assert replay.counters["duplicates"] == 3 and replay.counters["gaps"] == 1
    assert replay.counters["transitions"] == 3 and replay.online.frames_written == 5
    data = replay.gather(replay.sample(200), use_features=False)
    assert set(data["state"][:, 0]) == {10, 13, 14}
    np.testing.assert_array_equal(data["next_state"], data["state"] + 1)


def test_ring_wrap_around_drops_the_oldest_transitions_from_sampling():
    capacity = 12
    replay = Replay(ReplayConfig(mode="online_only"), FrameStore(capacity, SHAPE, 1, 4), None, warmup=1)
    for e in range(6):  # 6 episodes x 5 frames = 30 frames through a 12-slot ring
        for t in range(4):
            replay.add(step(f"e{e}", t, 10 * e + t, last=t == 3))
    store = replay.online
    assert store.frames_written == 30 and store.num_frames == capacity
    data = replay.gather(replay.sample(2000), use_features=False)
    np.testing.assert_array_equal(data["next_state"], data["state"] + 1)
    # Only the newest frames survive; their transitions are all sampleable, nothing older is.
    assert data["state"].min() >= 30 and set(data["state"][:, 0]) == set(store.states[store.transition_slots(), 0])
    live = np.flatnonzero(replay.tree.priorities() > 0)
    np.testing.assert_array_equal(live, store.transition_slots())


def test_balanced_replay_starts_at_the_initial_online_fraction():
    offline = offline_store(episodes=20, steps=10)  # 200 offline transitions
    warmup = 50
    replay = Replay(
        ReplayConfig(mode="balanced", init_online_fraction=0.25), FrameStore(1000, SHAPE, 1, 4), offline, warmup=warmup
    )
    for t in range(warmup):
        replay.add(step("e", t, t, last=t == warmup - 1))
    indices = replay.sample(40_000)
    assert replay.is_offline(indices).mean() == pytest.approx(0.75, abs=0.01)


def test_priority_updates_shift_sampling_and_follow_the_running_max():
    offline = offline_store(episodes=2, steps=10)
    replay = Replay(
        ReplayConfig(mode="balanced", init_online_fraction=0.5), FrameStore(100, SHAPE, 1, 4), offline, warmup=20
    )
    offline_slots = offline.transition_slots()
    replay.update_priorities(offline_slots, np.full(len(offline_slots), 1e9))  # clamped to max_priority
    assert replay.max_priority == 1e3
    replay.add(step("e", 0, 0))
    replay.add(step("e", 1, 1, last=True))
    online_leaves = replay.n_offline + replay.online.transition_slots()
    np.testing.assert_allclose(replay.tree.priorities(online_leaves), 1e3)  # entered at the max


@pytest.mark.parametrize("mode, offline_share", [("uniform", 200 / 220), ("online_only", 0.0)])
def test_uniform_and_online_only_baselines(mode, offline_share):
    replay = Replay(ReplayConfig(mode=mode), FrameStore(100, SHAPE, 1, 4), offline_store(20, 10), warmup=20)
    for t in range(20):
        replay.add(step("e", t, t, last=t == 19))
    share = replay.is_offline(replay.sample(40_000)).mean()
    assert share == pytest.approx(offline_share, abs=0.01)


def test_modes_other_than_online_only_need_offline_data():
    with pytest.raises(ValueError, match="needs offline data"):
        Replay(ReplayConfig(mode="balanced"), FrameStore(10, SHAPE, 1, 4), None, warmup=1)
    with pytest.raises(ValueError, match="replay mode"):
        ReplayConfig(mode="prioritized")
