"""Shared pieces of the link tests: specs, deterministic transitions, polling with a deadline,
keys, and real processes for each end (the robot end also runs as `python tests/link_helpers.py`).

Transition (e, s) carries state [e, s], so whatever ends up in a dataset can be traced back to
the transitions that were sent, and an episode written twice or a step lost shows up.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from robot_node import protocol as wire
from robot_node.dataset import DatasetWriter, open_dataset
from robot_node.keys import generate
from robot_node.link import LinkConfig, ZmqTrainerLink
from robot_node.link_interface import Transition
from robot_node.spec import ActionSpec, ObservationSpec

ROOT = Path(__file__).resolve().parents[1]
OBS = ObservationSpec(image_shape=(32, 32, 3), state_names=("episode", "step"))
ACT = ActionSpec()
EPISODE_STEPS = 10
SPECS = wire.Specs(OBS, ACT)
FAST = {"heartbeat_s": 0.1, "peer_timeout_s": 1.0}  # liveness settings that keep the tests short


def image(episode: int, step: int, shape: tuple[int, int, int] = OBS.image_shape) -> np.ndarray:
    h, w, _ = shape
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 7 + episode * 13, y * 5 + step * 11, (x + y) * 3 + episode + step], axis=-1)
    return (base % 256).astype(np.uint8)


def transition(episode: int, step: int, steps: int = EPISODE_STEPS, shape: tuple[int, int, int] = OBS.image_shape) -> Transition:
    last = step == steps - 1
    return Transition(
        episode_id=f"ep{episode:05d}",
        step=step,
        image=image(episode, step, shape),
        state=np.float32([episode, step]),
        action=np.float32([np.sin(episode + step), np.cos(step), 0.5, -0.5]),
        reward=1.0 if last and episode % 2 == 0 else 0.0,
        terminal=last and episode % 2 == 0,
        truncated=last and episode % 2 == 1,
        policy_version=3,
        stamp=1000.0 + episode * steps + step,
        next_image=image(episode, step + 1, shape) if last else None,
        next_state=np.float32([episode, step + 1]) if last else None,
    )


def stream(count: int, start: int = 0) -> list[Transition]:
    """Transitions number start .. start+count-1 of an endless run of EPISODE_STEPS-step episodes."""
    return [transition(*divmod(i, EPISODE_STEPS)) for i in range(start, start + count)]


def message_of(transitions: list[Transition], codec: wire.Codec = wire.Codec(), first_seq: int = 0) -> list[bytes]:
    """A TRANSITIONS message as robot1 would send it."""
    batch = [(first_seq + i, wire.encode_transition(t, SPECS, codec)) for i, t in enumerate(transitions)]
    return wire.pack_transitions("robot1", codec.name, SPECS, batch)


def decoded(transitions: list[Transition], first_seq: int = 0) -> list[wire.DecodedItem]:
    """The items a trainer decodes from such a message."""
    return wire.decode_transitions(wire.parse(message_of(transitions, first_seq=first_seq), "trainer"), SPECS)


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.02) -> float:
    """Poll until `predicate()` is true; returns the seconds it took, fails the test after the deadline."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)
    return time.monotonic() - start


def make_keys(directory: Path, robots: tuple[str, ...] = ("robot1",)) -> Path:
    """trainer.key(_secret) and one pair per robot in `directory`; robot public keys in allow/."""
    generate("trainer", directory)
    (directory / "allow").mkdir()
    for robot in robots:
        generate(robot, directory)
        (directory / "allow" / f"{robot}.key").write_bytes((directory / f"{robot}.key").read_bytes())
    return directory


def robot_config(endpoint: str, spool: Path, keys: Path | None, robot_id: str = "robot1", **overrides) -> LinkConfig:
    secure = {"secret_key": str(keys / f"{robot_id}.key_secret"), "trainer_key": str(keys / "trainer.key")} if keys else {"insecure": True}
    return LinkConfig(endpoint=endpoint, robot_id=robot_id, spool_dir=str(spool), observation_spec=OBS, action_spec=ACT, **secure, **{**FAST, **overrides})


def template_dataset(path: Path) -> Path:
    """An empty dataset that gives the trainer process its task and specs (--like)."""
    DatasetWriter(path, task="link-test", env_id="o2o_rl/LinkTest-v0", observation_spec=OBS, action_spec=ACT, max_episode_steps=EPISODE_STEPS)
    return path


def stored_steps(dataset_dir: Path) -> Counter[tuple[int, int]]:
    """How often each (episode, step) appears among the transitions of a dataset."""
    counts: Counter[tuple[int, int]] = Counter()
    for episode in open_dataset(dataset_dir):
        counts.update((int(e), int(s)) for e, s in episode.states[:-1])
    return counts


def check_episode(dataset_episode, episode: int) -> None:
    """A stored episode equals the one the robot lived, frame for frame."""
    sent = [transition(episode, s) for s in range(EPISODE_STEPS)]
    np.testing.assert_array_equal(dataset_episode.frames, np.stack([t.image for t in sent] + [sent[-1].next_image]))
    np.testing.assert_array_equal(dataset_episode.actions, np.stack([t.action for t in sent]))
    assert dataset_episode.terminals[-1] == sent[-1].terminal and dataset_episode.truncations[-1] == sent[-1].truncated


class Process:
    """A child process whose stdout lines can be awaited with a deadline."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_line(self, prefix: str, timeout_s: float = 30.0) -> str:
        def line() -> str | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"process exited with {self.proc.returncode}:\n{self.output()}")
            return next((ln for ln in self.output().splitlines() if ln.startswith(prefix)), None)

        wait_for(line, timeout_s, f"a line starting with {prefix!r}")
        return line()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def start_trainer(storage: Path, like: Path, keys: Path | None, log_path: Path, bind: str = "tcp://127.0.0.1:0") -> tuple[Process, str]:
    args = ["-m", "trainer.link", "--storage", str(storage), "--like", str(like), "--bind", bind, "--heartbeat", "0.1", "--timeout", "1.0"]
    args += ["--key", str(keys / "trainer.key_secret"), "--allow", str(keys / "allow")] if keys else ["--insecure"]
    trainer = Process(args, log_path)
    endpoint = trainer.wait_line("listening on ").split()[-1]
    return trainer, endpoint


def start_robot(endpoint: str, spool: Path, keys: Path | None, log_path: Path, start: int, count: int, rate: float) -> Process:
    args = [str(Path(__file__)), "--endpoint", endpoint, "--spool", str(spool), "--start", str(start), "--count", str(count), "--rate", str(rate)]
    args += ["--keys", str(keys)] if keys else []
    return Process(args, log_path)


def _robot_main() -> None:
    """A robot process: submit transitions start..start+count-1 at `rate`, report, and keep the
    link running (flushing the spool) until terminated."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--spool", required=True)
    parser.add_argument("--keys")
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--rate", type=float, default=200.0)
    args = parser.parse_args()
    link = ZmqTrainerLink(robot_config(args.endpoint, Path(args.spool), Path(args.keys) if args.keys else None))
    print("robot started", flush=True)
    for i, t in enumerate(stream(args.count, args.start)):
        assert link.submit(t)
        print(f"submitted {args.start + i + 1}", flush=True)
        time.sleep(1.0 / args.rate)
    while True:
        status = link.status()
        print(f"status acked={status.counters['acked']} backlog={status.counters['backlog']} connected={status.connected}", flush=True)
        time.sleep(0.1)


if __name__ == "__main__":
    _robot_main()
