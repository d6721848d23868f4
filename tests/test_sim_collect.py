"""`o2o-sim collect | replay | demo`: the dataset round trip, replays, and one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import gymnasium as gym
import numpy as np
import pytest

import sim  # noqa: F401  (registers the o2o_rl/ environments)
from robot_node.dataset import open_dataset
from sim.cli import main
from sim.collect import CollectConfig, collect, make_actor, rollout
from sim.robot import STATE_JOINTS

O2O_SIM = Path(sys.executable).with_name("o2o-sim")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    return subprocess.run([str(O2O_SIM), *map(str, args)], capture_output=True, text=True, timeout=120, env=env)


def one_line_error(stderr: str, *words: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    """A small pick-place dataset written by the real console script."""
    out = tmp_path_factory.mktemp("collect") / "pick_place"
    result = run_cli("collect", "--task", "pick_place", "--episodes", 4, "--random-fraction", 0.5, "--seed", 3, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "4 episodes, 160 transitions" in result.stdout and "random" in result.stdout
    return out


def test_collect_writes_a_dataset_that_open_dataset_reads_back(dataset_dir):
    dataset = open_dataset(dataset_dir)
    assert (dataset.task, dataset.env_id, dataset.max_episode_steps) == ("pick_place", "o2o_rl/PickPlace-v0", 40)
    assert dataset.observation_spec.image_shape == (64, 64, 3)
    assert dataset.observation_spec.state_names == STATE_JOINTS
    assert dataset.action_spec.names == ("dx", "dy", "dz", "gripper")
    assert len(dataset) == 4 and dataset.num_transitions == 160
    assert sorted(r.source for r in dataset.records).count("random") == 2
    assert {"seed": 3, "episodes": 4, "random_fraction": 0.5, "collector": "o2o-sim collect"}.items() <= dataset.meta.items()
    assert dataset.meta["control"]["max_step_m"] > 0
    manifest = json.loads((dataset_dir / "manifest.json").read_text())
    assert manifest["counts"]["transitions"] == 160 and set(manifest["success_rate_by_source"]) == set(manifest["counts"]["by_source"])
    for record, episode in zip(dataset.records, dataset):
        assert episode.frames.shape == (41, 64, 64, 3) and episode.states.shape == (41, len(STATE_JOINTS))
        assert episode.truncations[-1] and not episode.truncations[:-1].any() and not episode.terminals.any()
        assert record.success == (episode.rewards.max() > 0)


def test_each_recorded_episode_is_reproduced_from_its_seed_and_source(dataset_dir):
    dataset = open_dataset(dataset_dir)
    env = gym.make("o2o_rl/PickPlace-v0")
    for index in (0, 3):
        record, stored = dataset.records[index], dataset.read(index)
        episode, success = rollout(env, record.seed, make_actor("pick_place", record.source, record.seed))
        np.testing.assert_array_equal(episode.actions, stored.actions)
        np.testing.assert_array_equal(episode.frames, stored.frames)
        assert success == record.success
    env.close()


def test_collect_in_process_at_another_image_size_for_the_drawer(tmp_path):
    config = CollectConfig(task="drawer_grasp", episodes=2, random_fraction=0.5, seed=1, image_size=84)
    dataset = collect(tmp_path / "d", config, progress=False)
    assert dataset.observation_spec.image_shape == (84, 84, 3) and dataset.max_episode_steps == 50
    assert open_dataset(tmp_path / "d").read(1).frames.shape == (51, 84, 84, 3)


def test_replay_writes_a_strip_and_a_video(dataset_dir, tmp_path):
    result = run_cli("replay", dataset_dir, "--episode", 1, "--out", tmp_path / "strip.png")
    assert result.returncode == 0, result.stderr
    strip = cv2.imread(str(tmp_path / "strip.png"))
    tile = 2 * 64 + 1  # frames doubled in size, one-pixel separators
    assert strip.shape == (5 * tile, 10 * tile, 3)  # 41 frames, 10 per row
    assert main(["replay", str(dataset_dir), "--episode", "1", "--every", "4", "--out", str(tmp_path / "ep.mp4")]) == 0
    video = cv2.VideoCapture(str(tmp_path / "ep.mp4"))
    frames = 0
    while video.read()[0]:
        frames += 1
    assert frames == 11


def test_cli_errors_are_one_line_and_non_zero(dataset_dir, tmp_path, capsys):
    result = run_cli("collect", "--task", "stack", "--episodes", 2, "--out", tmp_path / "x")
    assert result.returncode == 2
    one_line_error(result.stderr, "stack")
    cases = [
        (["replay", str(tmp_path / "missing"), "--out", str(tmp_path / "s.png")], "no such dataset directory"),
        (["replay", str(dataset_dir), "--episode", "4", "--out", str(tmp_path / "s.png")], "out of range"),
        (["replay", str(dataset_dir), "--out", str(tmp_path / "s.gif")], ".png"),
        (["collect", "--task", "pick_place", "--episodes", "2", "--random-fraction", "2", "--out", str(tmp_path / "y")], "--random-fraction"),
        (["collect", "--task", "pick_place", "--episodes", "2", "--out", str(dataset_dir)], "already holds a dataset"),
    ]
    for argv, problem in cases:
        assert main(argv) == 1, argv
        one_line_error(capsys.readouterr().err, problem)


def test_a_corrupted_episode_is_named_and_the_others_still_replay(dataset_dir, tmp_path, capsys):
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for path in dataset_dir.rglob("*"):
        if path.is_file():
            target = damaged / path.relative_to(dataset_dir)
            target.parent.mkdir(exist_ok=True)
            target.write_bytes(path.read_bytes())
    episode_file = damaged / "episodes" / "episode_000002.npz"
    data = bytearray(episode_file.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
    episode_file.write_bytes(bytes(data))
    result = run_cli("replay", damaged, "--episode", 2, "--out", tmp_path / "bad.png")
    assert result.returncode == 1
    one_line_error(result.stderr, "episode_000002.npz")
    for index in (0, 1, 3):
        assert main(["replay", str(damaged), "--episode", str(index), "--out", str(tmp_path / f"{index}.png")]) == 0


def test_demo_collects_both_tasks_writes_success_strips_and_reruns(tmp_path, capsys):
    out = tmp_path / "demo"
    for _ in range(2):  # a second run replaces the first run's output
        assert main(["demo", "--out", str(out), "--episodes", "20"]) == 0
    printed = capsys.readouterr().out
    for task in ("pick_place", "drawer_grasp"):
        assert len(open_dataset(out / task)) == 20
        strip = cv2.imread(str(out / f"{task}_success.png"))
        assert strip is not None and strip.shape[0] > 64
        assert f"task {task}, 20 episodes" in printed
    (out / "pick_place" / "manifest.json").write_text("{}")  # no longer the demo's own dataset
    assert main(["demo", "--out", str(out), "--episodes", "2"]) == 1
    one_line_error(capsys.readouterr().err, "not an earlier demo")
