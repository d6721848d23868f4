"""`o2o-trainer serve` as a real process, driven by a real robot link over real sockets.

A tiny pretrained run (reach task, smallest network) is served; the test process plays the
robot with `robot_node.link.ZmqTrainerLink`, streaming the offline dataset's episodes, and
takes the weights the service pushes as the robot would (`load_policy` with its specs).
"""

import dataclasses
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from link_helpers import ROOT, Process, make_keys, template_dataset, wait_for
from trainer_helpers import torch_single_thread, write_reach_dataset  # noqa: F401  (autouse)

from robot_node.dataset import open_dataset
from robot_node.link import LinkConfig, ZmqTrainerLink
from robot_node.policy import load_policy
from trainer.checkpoint import read_checkpoint
from trainer.cli import main
from trainer.metrics import read_metrics
from trainer.service import episode_transitions
from trainer.transition_store import TransitionStore

SMALL = ["--ensemble-size", "2", "--channels", "4", "--strides", "2,1", "--feature-dim", "8", "--hidden-dim", "32"]
WARMUP = 20
STEPS_PER_EPISODE = 20  # the reach task's episodes
LEARN = ["--warmup", str(WARMUP), "--batch-size", "16", "--ratio-batch-size", "16", "--threads", "1"]
DEADLINE_S = 60.0  # generous: the machine is shared, and an ONNX export takes seconds


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> tuple[Path, Path]:
    """(pretrain run, its dataset of 4 reach episodes)."""
    root = tmp_path_factory.mktemp("serve")
    data = write_reach_dataset(root / "data", scripted=2, random=2)
    run = root / "pre"
    assert main(["pretrain", "--data", str(data), "--out", str(run), "--steps", "2", "--eval-every", "0", *SMALL]) == 0
    return run, data


def start_serve(run: Path, out: Path, *flags: str, keys: Path | None = None) -> tuple[Process, str]:
    secure = ["--key", str(keys / "trainer.key_secret"), "--allow", str(keys / "allow")] if keys else ["--insecure"]
    args = ["-m", "trainer.cli", "serve", "--init", str(run), "--out", str(out), "--bind", "tcp://127.0.0.1:0"]
    process = Process([*args, *secure, *LEARN, *flags], out.with_name(out.name + ".log"))
    endpoint = process.wait_line("listening on ", timeout_s=DEADLINE_S).split()[-1]
    return process, endpoint


def open_robot(endpoint: str, spool: Path, data: Path, robot_id: str = "robot1", keys: Path | None = None, version: int = 1):
    dataset = open_dataset(data)
    secure = {"secret_key": str(keys / f"{robot_id}.key_secret"), "trainer_key": str(keys / "trainer.key")} if keys else {"insecure": True}
    config = LinkConfig(
        endpoint=endpoint,
        robot_id=robot_id,
        spool_dir=str(spool),
        observation_spec=dataset.observation_spec,
        action_spec=dataset.action_spec,
        heartbeat_s=0.1,
        peer_timeout_s=1.0,
        weights_version=version,  # the pretrained export the robot starts with
        **secure,
    )
    return ZmqTrainerLink(config)


def send_episodes(link: ZmqTrainerLink, data: Path, episodes: range) -> None:
    """Episodes of the offline dataset, streamed step by step as the robot lived them (policy v1)."""
    dataset = open_dataset(data)
    for i in episodes:
        for t in episode_transitions(dataset.read(i % len(dataset)), f"boot0-{i}"):
            assert link.submit(dataclasses.replace(t, policy_version=1))


class Weights:
    """The versions a robot has taken, each checked as the robot checks it before a swap."""

    def __init__(self, link: ZmqTrainerLink, data: Path, held: int = 1) -> None:
        self.link, self.versions = link, [held]
        dataset = open_dataset(data)
        self.specs = dataset.observation_spec, dataset.action_spec

    def take(self) -> int:
        weights = self.link.latest_weights(self.versions[-1])
        if weights is not None:
            assert load_policy(weights, *self.specs).version == weights.version
            self.versions.append(weights.version)
        return self.versions[-1]

    def wait_for(self, version: int) -> None:
        wait_for(lambda: self.take() >= version, DEADLINE_S, f"weights v{version} at the robot")


def stop(process: Process, sig: int | None = None) -> int:
    if sig is not None:
        process.proc.send_signal(sig)
    try:
        return process.proc.wait(timeout=DEADLINE_S)
    finally:
        process.stop()


def test_robots_stream_episodes_and_take_pushed_weights_until_steps_are_received(pretrained, tmp_path):
    run, data = pretrained
    out = tmp_path / "serve"
    flags = ["--steps", "60", "--push-every", "20", "--log-every", "5", "--checkpoint-every", "1000"]
    service, endpoint = start_serve(run, out, *flags)
    robot = open_robot(endpoint, tmp_path / "spool", data)
    ahead = open_robot(endpoint, tmp_path / "spool-ahead", data, robot_id="robot9", version=50)  # from elsewhere
    try:
        weights = Weights(robot, data)
        send_episodes(robot, data, range(2))  # 40 transitions: 21 updates allowed
        weights.wait_for(2)  # pushed after update 20
        send_episodes(robot, data, range(2, 3))  # 60: 41 updates, a push after update 40 and the final one
        assert stop(service) == 0, service.output()
        weights.wait_for(4)
    finally:
        robot.close()
        ahead.close()
    log = service.output()
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["episodes"], summary["transitions"], summary["updates"]) == (3, 60, 41)
    assert (summary["pushes"], summary["last_version"]) == (3, 4)
    assert summary["replay"]["transitions"] == 60 and summary["rejected"] == {}
    assert summary["link"]["stored"] == 60 and summary["link"]["refused"] == 0
    assert weights.versions == sorted(set(weights.versions)) and weights.versions[-1] == 4
    assert log.count("robot robot9 holds weights v50") == 1 and "--first-version 51" in log

    metrics = read_metrics(out)
    assert metrics["episode/success"][0] == [20, 40, 60]  # at online transitions received
    assert metrics["episode/length"][1] == [20.0] * 3 and metrics["episode/policy_version"][1] == [1.0] * 3
    assert "critic_loss" in metrics and "episode/return" in metrics
    for received, updates in zip(*metrics["updates"]):  # the update-to-data cap, whenever it was logged
        assert updates <= 1 * (received - WARMUP + 1)
    assert metrics["weights/version"] == ([40, 60, 60], [2.0, 3.0, 4.0])

    stored = open_dataset(out / "storage" / "dataset")
    assert [(r.robot_id, r.episode_id) for r in stored.records] == [("robot1", f"boot0-{i}") for i in range(3)]
    np.testing.assert_array_equal(stored.read(2).frames, open_dataset(data).read(2).frames)
    checkpoint = read_checkpoint(out)
    assert (checkpoint["kind"], checkpoint["step"], checkpoint["weights_version"]) == ("serve", 41, 4)
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sigterm_keeps_a_checkpoint_and_resume_reloads_stored_episodes_and_pushes_newer_versions(pretrained, tmp_path):
    run, data = pretrained
    keys = make_keys(tmp_path / "keys")
    out = tmp_path / "serve"
    service, endpoint = start_serve(run, out, "--push-every", "21", keys=keys)  # --steps 0: until stopped
    robot = open_robot(endpoint, tmp_path / "spool", data, keys=keys)
    try:
        weights = Weights(robot, data)
        send_episodes(robot, data, range(2))  # 40 transitions: 21 updates allowed, then a push
        weights.wait_for(2)  # over CURVE, with the robot's key in the allow-list
        assert stop(service, signal.SIGTERM) == 0, service.output()
    finally:
        robot.close()
    first = read_checkpoint(out)
    assert (first["kind"], first["step"], first["weights_version"]) == ("serve", 21, 2)
    assert json.loads((out / "summary.json").read_text())["last_version"] == 2

    service, endpoint = start_serve(run, out, "--resume", "--steps", "60", keys=keys)
    robot = open_robot(endpoint, tmp_path / "spool", data, keys=keys, version=weights.take())
    try:
        resumed = Weights(robot, data, held=weights.versions[-1])
        send_episodes(robot, data, range(2, 3))
        assert stop(service) == 0, service.output()
        resumed.wait_for(3)  # the final push, after update 41
    finally:
        robot.close()
    assert "loaded 2 stored robot episodes (40 transitions)" in service.output()
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["transitions"], summary["updates"], summary["last_version"]) == (60, 41, 3)
    assert (summary["replay"]["episodes"], summary["replay"]["transitions"]) == (3, 60)
    assert len(open_dataset(out / "storage" / "dataset")) == 3
    assert read_metrics(out)["episode/success"][0] == [20, 40, 60]  # one metrics.csv across both runs


def test_a_learner_behind_the_robots_says_so_while_it_happens(pretrained, tmp_path):
    run, data = pretrained
    out = tmp_path / "serve"
    # 200 updates allowed per transition: no CPU keeps up, as with a robot far faster than the learner.
    service, endpoint = start_serve(run, out, "--updates-per-step", "200", "--push-every", "100", "--log-every", "5")
    robot = open_robot(endpoint, tmp_path / "spool", data)
    try:
        send_episodes(robot, data, range(2))  # 40 transitions: 4,200 updates allowed at once
        wait_for(lambda: "updates behind the robots' data" in service.output(), DEADLINE_S, "the lag warning")
        assert stop(service, signal.SIGTERM) == 0, service.output()
    finally:
        robot.close()
    line = next(line for line in service.output().splitlines() if "updates behind the robots' data" in line)
    assert "WARNING" in line and "the robot acts with v1" in line
    behind = read_metrics(out)["learner/updates_behind"][1]
    assert behind[-1] > 100  # logged with the episode that arrived


def test_user_errors_exit_2_with_one_line(pretrained, tmp_path, capsys):
    run, data = pretrained
    base = ["serve", "--init", str(run), "--insecure", "--bind", "tcp://127.0.0.1:0", "--steps", "1"]
    cases = [
        (["serve", "--init", str(tmp_path / "nowhere"), "--out", str(tmp_path / "a")], "nowhere: no checkpoint.pt"),
        ([*base, "--out", str(tmp_path / "b"), "--data", str(template_dataset(tmp_path / "other"))], "differ from the checkpoint's"),
        ([*base, "--out", str(tmp_path / "c"), "--hidden-dim", "64"], "--hidden-dim: the network's shape comes from --init"),
        ([*base, "--out", str(tmp_path / "d"), "--push-every", "0"], "--push-every 0: must be 1 or more"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    keys = make_keys(tmp_path / "keys")
    secure = ["--key", str(keys / "robot1.key"), "--allow", str(keys / "allow")]  # a public key, not the secret
    assert main(["serve", "--init", str(run), "--out", str(tmp_path / "e"), *secure]) == 2
    assert "holds no secret key" in capsys.readouterr().err


def test_a_storage_in_use_by_another_trainer_stops_the_command_in_one_line(pretrained, tmp_path):
    run, data = pretrained
    out = tmp_path / "serve"
    like = open_dataset(data)
    holder = TransitionStore(
        out / "storage",
        observation_spec=like.observation_spec,
        action_spec=like.action_spec,
        task=like.task,
        env_id=like.env_id,
        max_episode_steps=like.max_episode_steps,
    )
    try:
        script = Path(sys.executable).with_name("o2o-trainer")
        args = [str(script), "serve", "--init", str(run), "--out", str(out), "--insecure", "--bind", "tcp://127.0.0.1:0"]
        result = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=ROOT)
    finally:
        holder.close()
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"o2o-trainer serve: error: storage {out / 'storage'}"), lines
    assert "Traceback" not in result.stderr


def test_steps_end_the_run_while_the_robot_keeps_streaming(pretrained, tmp_path):
    """A robot does not stop at --steps: episodes beyond it are stored, not trained on, so the
    update cap stops growing and the run ends (it used to follow the stream for ever)."""
    run, data = pretrained
    out = tmp_path / "serve"
    service, endpoint = start_serve(run, out, "--steps", "60", "--push-every", "1000")
    robot = open_robot(endpoint, tmp_path / "spool", data)
    try:
        send_episodes(robot, data, range(8))  # 160 transitions, all at once
        assert stop(service) == 0, service.output()
    finally:
        robot.close()
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["transitions"], summary["updates"]) == (60, 41)
    assert summary["replay"]["transitions"] == 60
