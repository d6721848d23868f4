"""The episode dataset format: round trip, frames stored once, and clear refusals of bad data."""

import json

import numpy as np
import pytest

from robot_node.dataset import Dataset, DatasetError, DatasetWriter, Episode, open_dataset
from robot_node.spec import ActionSpec, ObservationSpec, SpecError

OBS = ObservationSpec(image_shape=(16, 16, 3), state_names=("j0", "j1", "gripper"))
ACT = ActionSpec()


def make_episode(rng: np.random.Generator, steps: int = 5) -> Episode:
    return Episode(
        frames=rng.integers(0, 256, (steps + 1, 16, 16, 3), dtype=np.uint8),
        states=rng.standard_normal((steps + 1, 3)).astype(np.float32),
        actions=rng.uniform(-1, 1, (steps, 4)).astype(np.float32),
        rewards=(rng.random(steps) > 0.5).astype(np.float32),
        terminals=np.zeros(steps, bool),
        truncations=np.eye(1, steps, steps - 1, dtype=bool)[0],
    )


def write(root, episodes) -> Dataset:
    writer = DatasetWriter(root, task="toy", env_id="o2o_rl/Toy-v0", observation_spec=OBS, action_spec=ACT, max_episode_steps=5)
    for i, episode in enumerate(episodes):
        writer.add(episode, source="scripted" if i % 2 else "random", success=i % 2 == 1, seed=i)
    return writer.dataset


def test_round_trip_keeps_every_array_and_the_manifest_counts(tmp_path):
    rng = np.random.default_rng(0)
    episodes = [make_episode(rng) for _ in range(4)]
    write(tmp_path / "d", episodes)

    dataset = open_dataset(tmp_path / "d")
    assert len(dataset) == 4 and dataset.num_transitions == 20
    assert dataset.observation_spec == OBS and dataset.action_spec == ACT
    assert dataset.success_rate == 0.5
    for original, loaded in zip(episodes, dataset):
        for name, value in original.arrays().items():
            np.testing.assert_array_equal(getattr(loaded, name), value, err_msg=name)
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert manifest["counts"] == {"episodes": 4, "transitions": 20, "successes": 2, "by_source": {"random": 2, "scripted": 2}}
    assert manifest["success_rate_by_source"] == {"random": 0.0, "scripted": 1.0}


def test_frames_are_stored_once_per_episode(tmp_path):
    rng = np.random.default_rng(1)
    # Incompressible frames, so the file holds about T+1 frames; obs and next_obs stored
    # separately would need 2T frames, about twice as much.
    episode = make_episode(rng, steps=20)
    write(tmp_path / "d", [episode])
    size = (tmp_path / "d" / "episodes" / "episode_000000.npz").stat().st_size
    assert size < 1.25 * episode.frames.nbytes


def test_corrupted_episode_names_the_file_and_others_still_load(tmp_path):
    rng = np.random.default_rng(2)
    write(tmp_path / "d", [make_episode(rng) for _ in range(3)])
    bad = tmp_path / "d" / "episodes" / "episode_000001.npz"
    data = bytearray(bad.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\x00" * 64
    bad.write_bytes(bytes(data))

    dataset = open_dataset(tmp_path / "d")
    with pytest.raises(DatasetError, match="episode_000001.npz"):
        dataset.read(1)
    assert dataset.read(0).length == 5 and dataset.read(2).length == 5


def test_missing_directory_manifest_and_episode_file_are_refused(tmp_path):
    with pytest.raises(DatasetError, match="no such dataset directory"):
        open_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no manifest.json"):
        open_dataset(tmp_path / "empty")
    write(tmp_path / "d", [make_episode(np.random.default_rng(3)) for _ in range(2)])
    (tmp_path / "d" / "episodes" / "episode_000000.npz").unlink()
    with pytest.raises(DatasetError, match="missing, first episodes/episode_000000.npz"):
        open_dataset(tmp_path / "d")


def test_malformed_manifest_is_refused(tmp_path):
    write(tmp_path / "d", [make_episode(np.random.default_rng(4))])
    manifest_path = tmp_path / "d" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["action_spec"]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match="malformed manifest.*action_spec"):
        open_dataset(tmp_path / "d")
    manifest_path.write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        open_dataset(tmp_path / "d")


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda e: e.rewards.__setitem__(2, np.nan), "rewards: contains NaN"),
        (lambda e: setattr(e, "frames", e.frames[:, :8]), r"frames: expected uint8\[6, 16, 16, 3\]"),
        (lambda e: setattr(e, "actions", e.actions[:, :3]), r"actions: expected float32\[5, 4\]"),
        (lambda e: e.actions.__setitem__((0, 0), 1.5), "actions: outside"),
        (lambda e: setattr(e, "states", e.states.astype(np.float64)), "states: expected float32"),
        (lambda e: e.terminals.__setitem__(1, True), "terminals/truncations: an episode may only end at its last step"),
    ],
)
def test_bad_episodes_are_refused_by_the_writer_and_the_reader(tmp_path, corrupt, message):
    rng = np.random.default_rng(5)
    episode = make_episode(rng)
    corrupt(episode)
    with pytest.raises(DatasetError, match=message):
        write(tmp_path / "w", [episode])
    # The same damage in a file written by someone else is caught on read, naming the file.
    write(tmp_path / "r", [make_episode(rng)])
    path = tmp_path / "r" / "episodes" / "episode_000000.npz"
    np.savez_compressed(path, **episode.arrays())
    with pytest.raises(DatasetError, match=f"episode_000000.npz: {message}"):
        open_dataset(tmp_path / "r").read(0)


def test_writer_refuses_to_overwrite_a_dataset(tmp_path):
    write(tmp_path / "d", [make_episode(np.random.default_rng(6))])
    with pytest.raises(DatasetError, match="already holds a dataset"):
        write(tmp_path / "d", [])


def test_specs_round_trip_and_refuse_nonsense():
    assert ObservationSpec.from_json(OBS.to_json()) == OBS
    assert ActionSpec.from_json(ACT.to_json()) == ACT
    with pytest.raises(SpecError):
        ObservationSpec(image_shape=(64, 64, 4))
    with pytest.raises(SpecError):
        ObservationSpec.from_json('{"image": {"shape": [8, 8, 3], "dtype": "float32"}, "state": {}}')
    with pytest.raises(SpecError):
        ActionSpec.from_json("[]")


def test_append_to_continues_a_dataset_after_its_last_episode(tmp_path):
    rng = np.random.default_rng(7)
    first = [make_episode(rng) for _ in range(2)]
    write(tmp_path / "d", first)
    later = make_episode(rng)
    writer = DatasetWriter.append_to(tmp_path / "d")
    writer.add(later, source="robot", success=True)

    dataset = open_dataset(tmp_path / "d")
    assert len(dataset) == 3 and dataset.records[2].file == "episodes/episode_000002.npz"
    for original, loaded in zip([*first, later], dataset):
        np.testing.assert_array_equal(loaded.frames, original.frames)
    assert json.loads((tmp_path / "d" / "manifest.json").read_text())["counts"]["by_source"] == {"random": 1, "scripted": 1, "robot": 1}
    with pytest.raises(DatasetError, match="no such dataset directory"):
        DatasetWriter.append_to(tmp_path / "nope")
