"""The robot node and the trainer as separate processes, as they are deployed: `sim_bridge` and
`o2o-robot` (config/sim_hil.yaml) as real subprocesses over DDS on loopback, a TrainerServer in
this process on real ZeroMQ over 127.0.0.1 with CURVE keys made by `o2o-keys`, and an operator
on the DDS domain recording the camera, the node's commands and its /diagnostics.

Episodes arrive once each and as the node lived them; a trainer that is down never stalls the
arm and gets the spooled transitions when it comes up; weights pushed mid-run are swapped in
without a missed tick, and bad ones are refused while the node keeps its policy."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from bridge_helpers import Operator, running, start, stop
from node_helpers import ACT, constant_model, dds_env, unique_domain_id, wait_until

from robot_node.dataset import open_dataset
from robot_node.link_interface import PolicyWeights
from robot_node.spec import ObservationSpec
from sim.robot import STATE_JOINTS
from trainer.link import ServerConfig, TrainerServer
from trainer.transition_store import TransitionStore

pytestmark = pytest.mark.integration

SIM_OBS = ObservationSpec((64, 64, 3), STATE_JOINTS)
STEPS = 8  # the node's time limit: every complete episode has this many steps
SCALE = np.array([0.03, 0.03, 0.03, 1.0])  # config/sim_hil.yaml's action_scale: command = SCALE * action
ACTION = [0.3, 0.1, -0.3, 0.5]  # forward, left and down, gripper half closed
DEADLINE_S = 60.0  # generous: the machine is shared with other work
LIVENESS = {"heartbeat_s": 0.2, "peer_timeout_s": 2.0}  # both ends, so that a lost peer shows in seconds


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """Key pairs for the trainer and robot arm1 from the `o2o-keys` command, arm1's public key
    in the trainer's allow-list directory, as the README tells an operator to do."""
    out = tmp_path / "keys"
    for name in ("trainer", "arm1"):
        subprocess.run([str(Path(sys.executable).with_name("o2o-keys")), "generate", name, "--out", str(out)], check=True, capture_output=True)
    (out / "robots").mkdir()
    shutil.copy(out / "arm1.key", out / "robots")
    return out


class Hil:
    """The simulated robot (bridge and node subprocesses), its operator, and the trainer once up."""

    def __init__(self, tmp_path: Path, keys: Path, domain: int) -> None:
        self.tmp, self.keys, self.domain = tmp_path, keys, domain
        self.operator = Operator(domain)
        self.server: TrainerServer | None = None
        self.bridge: subprocess.Popen | None = None
        self.node: subprocess.Popen | None = None

    def start_trainer(self, bind: str = "tcp://127.0.0.1:0") -> TrainerServer:
        store = TransitionStore(
            self.tmp / "trainer", observation_spec=SIM_OBS, action_spec=ACT, task="pick_place",
            env_id="o2o_rl/PickPlace-v0", max_episode_steps=STEPS, sync=False,
        )
        config = ServerConfig(bind=bind, secret_key=str(self.keys / "trainer.key_secret"), allow_dir=str(self.keys / "robots"), **LIVENESS)
        self.server = TrainerServer(config, store)
        return self.server

    def start_robot(self, endpoint: str, model: bytes, *params: str, speed: float = 5.0) -> None:
        model_path = self.tmp / "policy.onnx"
        model_path.write_bytes(model)
        self.bridge = start("sim_bridge", ["--adapter", "dds", "--speed", str(speed)], self.domain, self.tmp / "bridge.log")
        node_params = {
            "model_path": model_path, "max_episode_steps": STEPS, "reset_retry_s": 0.5, "diagnostics_rate_hz": 5.0,
            "trainer_endpoint": endpoint, "robot_id": "arm1", "spool_dir": self.tmp / "spool",
            "secret_key_file": self.keys / "arm1.key_secret", "trainer_key_file": self.keys / "trainer.key",
            "link_heartbeat_s": LIVENESS["heartbeat_s"], "link_timeout_s": LIVENESS["peer_timeout_s"],
        }
        args = ["--adapter", "dds", "--params", "config/sim_hil.yaml"]
        args += [arg for name, value in node_params.items() for arg in ("-p", f"{name}:={value}")] + list(params)
        self.node = start("o2o-robot", args, self.domain, self.tmp / "node.log")

    def status(self, suffix: str) -> dict[str, str] | None:
        """The values of the node's newest DiagnosticStatus named ...suffix (None before the first);
        fails the test at once if the bridge or the node has died."""
        running(*[p for p in (self.bridge, self.node) if p is not None])
        status = self.operator.status(suffix)
        return None if status is None else status.values

    def stop_camera(self) -> None:
        """Stop the bridge (it must exit cleanly): no more images, rewards or resets."""
        assert_clean_exit(self.bridge, stop(self.bridge))
        self.bridge = None

    def stop_robot(self) -> str:
        """Stop the node and the bridge; both must exit cleanly. Returns the node's output."""
        output = stop(self.node)
        assert_clean_exit(self.node, output)
        if self.bridge is not None:
            self.stop_camera()
        return output

    def close(self) -> None:
        self.operator.close()
        for process in (self.node, self.bridge):
            if process is not None:
                stop(process)
        if self.server is not None:
            self.server.close()


def assert_clean_exit(process: subprocess.Popen, output: str) -> None:
    assert process.returncode == 0 and "Traceback" not in output, output


@pytest.fixture
def hil(tmp_path, keys, monkeypatch):
    domain = unique_domain_id()
    for key, value in dds_env(domain).items():
        monkeypatch.setenv(key, value)
    world = Hil(tmp_path, keys, domain)
    yield world
    world.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_episodes_reach_the_trainer_exactly_once_as_the_node_lived_them(hil):
    server = hil.start_trainer()
    hil.start_robot(server.endpoint, constant_model(ACTION, obs=SIM_OBS, log_std=-1.0), "-p", "explore:=true", "-p", "seed:=5")
    wait_until(lambda: hil.status(": link") is not None and server.store.counters["episodes_written"] >= 3, DEADLINE_S, "three episodes at the trainer")
    link = hil.status(": link")
    assert link["connected"] == "true" and link["peer"] == server.endpoint
    assert "last message" in hil.operator.status(": link").message  # how long the trainer has been quiet

    # The camera stops: the node truncates its episode and has nothing more to send.
    hil.stop_camera()

    def settled() -> bool:
        control, link, episodes = hil.status(": control"), hil.status(": link"), hil.status(": episode")
        store = server.store.counters
        return (
            control["mode"] == "stale" and link["link_backlog"] == "0"
            and store["stored"] == int(link["transitions_submitted"]) and store["pending_episodes"] == 0
            and store["episodes_written"] == int(episodes["terminal"]) + int(episodes["truncated"])
        )

    wait_until(settled, DEADLINE_S, "every submitted transition stored and every ended episode written")
    submitted = int(hil.status(": link")["transitions_submitted"])
    output = hil.stop_robot()
    assert "trainer link to " + server.endpoint + " as arm1 (CURVE, png images)" in output

    dataset = open_dataset(hil.tmp / "trainer" / "dataset")
    episodes = list(dataset)
    # Exactly once: as many transitions in the dataset as the node handed to its link.
    assert dataset.num_transitions == submitted and server.store.counters["stored"] == submitted
    lengths = [e.length for e in episodes]
    assert lengths.count(STEPS) >= 3 and len(lengths) - lengths.count(STEPS) <= 1, lengths  # only the cut one is short
    commands = np.array(hil.operator.commands)
    images = {bytes(image.data) for image in hil.operator.images}
    for episode in episodes:
        assert episode.truncations[-1] and not episode.truncations[:-1].any() and not episode.terminals.any()
        assert set(episode.policy_versions.tolist()) == {1}
        assert set(np.unique(episode.rewards).tolist()) <= {0.0, 1.0}
        # Each stored action is what the node commanded (in robot units, after its safety rules),
        # and each stored frame is a camera image the bridge published.
        for action in episode.actions:
            assert np.abs(commands - SCALE * action).max(axis=1).min() < 1e-7, f"action {action} was never commanded"
        assert all(frame.tobytes() in images for frame in episode.frames)
    all_actions = np.concatenate([e.actions for e in episodes])
    assert len(np.unique(all_actions[:, 3])) > len(all_actions) // 2  # exploration: the actions differ


def test_without_a_trainer_the_node_keeps_commanding_and_spools_until_it_comes_up(hil):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    hil.start_robot(endpoint, constant_model(ACTION, obs=SIM_OBS), "-p", "explore:=false")
    wait_until(
        lambda: (e := hil.status(": episode")) and int(e["truncated"]) >= 2 and int(hil.status(": link")["link_backlog"]) >= 2 * STEPS,
        DEADLINE_S, "two episodes spooled without a trainer",
    )
    link = hil.status(": link")
    assert link["connected"] == "false" and link["peer"] == endpoint and "not connected" in hil.operator.status(": link").message
    spooled = int(link["link_backlog"])
    assert int(link["link_acked"]) == 0 and int(link["link_spooled"]) >= spooled
    commanded = len(hil.operator.commands)
    wait_until(lambda: len(hil.operator.commands) >= commanded + STEPS, DEADLINE_S, "commands to keep coming")

    server = hil.start_trainer(bind=endpoint)
    wait_until(lambda: server.store.counters["stored"] >= spooled, DEADLINE_S, "the spooled transitions at the trainer")
    wait_until(lambda: hil.status(": link")["connected"] == "true", DEADLINE_S, "the link connected in /diagnostics")
    wait_until(lambda: server.store.counters["episodes_written"] >= 2, DEADLINE_S, "the episodes run without a trainer written")
    assert int(hil.status(": link")["link_acked"]) >= spooled
    hil.stop_robot()


def weights(model: bytes, version: int) -> PolicyWeights:
    return PolicyWeights.from_onnx(model, version=version, train_step=100 * version, observation_spec=SIM_OBS, action_spec=ACT)


def test_weights_pushed_mid_run_swap_without_a_missed_tick_and_bad_ones_are_refused(hil):
    def gripper_commands() -> set[float]:
        return {round(c[3], 6) for c in hil.operator.commands[-5:]}

    server = hil.start_trainer()
    v2 = [0.1, -0.1, -0.2, -0.5]  # opens the gripper that v1 half closes
    # Timer-driven at the bridge's rate (10 Hz, as on a robot), so that a late tick counts as missed.
    hil.start_robot(
        server.endpoint, constant_model(ACTION, obs=SIM_OBS, version=1),
        "-p", "explore:=false", "-p", "trigger:=timer", "-p", "control_rate_hz:=10.0", speed=1.0,
    )
    wait_until(lambda: (s := hil.status(": link")) and s["connected"] == "true" and 0.5 in gripper_commands(), DEADLINE_S, "v1 commanding, link up")
    before = hil.status(": control")

    server.push_weights(weights(constant_model(v2, obs=SIM_OBS, version=2), 2))
    wait_until(lambda: hil.status(": policy")["version"] == "2", DEADLINE_S, "version 2 in /diagnostics")
    wait_until(lambda: gripper_commands() == {-0.5}, DEADLINE_S, "v2's commands")
    ticks = int(hil.status(": control")["ticks"])
    wait_until(lambda: int(hil.status(": control")["ticks"]) >= ticks + 20, DEADLINE_S, "twenty more ticks")
    after = hil.status(": control")
    assert after["missed_ticks"] == before["missed_ticks"], "a tick was missed across the swap"

    # Bytes that do not match their sha256 never reach the node's model checks: the link refuses them.
    good_v3 = constant_model(ACTION, obs=SIM_OBS, version=3)
    server.push_weights(PolicyWeights(3, 300, good_v3, "0" * 64, SIM_OBS, ACT))
    wait_until(lambda: hil.status(": link").get("link_refused.sha256_mismatch") == "1", DEADLINE_S, "the sha256 refusal")
    # A model made for another camera, in an envelope that claims the robot's specs: the node refuses it.
    other_camera = ObservationSpec((84, 84, 3), STATE_JOINTS)
    server.push_weights(weights(constant_model(ACTION, obs=other_camera, version=4), 4))
    policy = wait_until(lambda: (p := hil.status(": policy")) and p["refused"] == "1" and p, DEADLINE_S, "the node's refusal")
    assert policy["version"] == "2" and policy["last_refusal"].startswith("v4:")
    commanded = len(hil.operator.commands)
    wait_until(lambda: len(hil.operator.commands) >= commanded + 10, DEADLINE_S, "commands after the refusals")
    assert gripper_commands() == {-0.5}  # still v2
    output = hil.stop_robot()
    assert "refused policy version 4" in output and "refused (sha256_mismatch)" in output
