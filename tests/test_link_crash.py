"""Processes killed with kill -9 mid-stream: nothing acknowledged or spooled is lost or stored twice."""

import re
import subprocess
import sys
import threading
import time

import pytest

from robot_node.dataset import open_dataset
from robot_node.link import LinkConfigError, ZmqTrainerLink
from robot_node.spool import Spool
from link_helpers import (
    ACT, EPISODE_STEPS, FAST, OBS, check_episode, make_keys, robot_config, start_robot, start_trainer, stored_steps, stream,
    template_dataset, wait_for,
)
from trainer.link import ServerConfig, TrainerServer
from trainer.transition_store import TransitionStore

pytestmark = pytest.mark.integration
DEADLINE_S = 30.0


def test_trainer_killed_mid_stream_then_restarted_stores_every_transition_exactly_once(tmp_path):
    keys = make_keys(tmp_path / "keys")
    like = template_dataset(tmp_path / "like")
    trainer, endpoint = start_trainer(tmp_path / "storage", like, keys, tmp_path / "trainer1.log")
    robot = ZmqTrainerLink(robot_config(endpoint, tmp_path / "spool", keys, batch_max=16))
    total = 600

    def control_loop():  # 300 transitions/s, as a robot would, whatever the trainer does
        for t in stream(total):
            assert robot.submit(t)
            time.sleep(1 / 300)

    loop = threading.Thread(target=control_loop)
    try:
        loop.start()
        wait_for(lambda: robot.status().counters["acked"] >= 150, DEADLINE_S, "a first part acknowledged")
        trainer.kill()  # kill -9, mid-stream
        acked_before = robot.status().counters["acked"]
        assert acked_before < total
        trainer, _ = start_trainer(tmp_path / "storage", like, keys, tmp_path / "trainer2.log", bind=endpoint)
        loop.join(timeout=DEADLINE_S)
        wait_for(lambda: robot.status().counters["acked"] == total, DEADLINE_S, "every transition acknowledged")
        assert robot.status().counters["disconnects"] >= 1
    finally:
        robot.close()
        trainer.stop()  # SIGTERM: the writer finishes its queue

    assert robot.status().counters["backlog"] == 0
    assert stored_steps(tmp_path / "storage" / "dataset") == {divmod(i, EPISODE_STEPS): 1 for i in range(total)}
    dataset = open_dataset(tmp_path / "storage" / "dataset")
    for episode in dataset:
        check_episode(episode, int(episode.states[0, 0]))
    assert len(dataset) == total // EPISODE_STEPS


def test_robot_killed_mid_stream_delivers_its_spool_after_a_restart(tmp_path):
    keys = make_keys(tmp_path / "keys")

    def open_server(bind):
        store = TransitionStore(tmp_path / "storage", observation_spec=OBS, action_spec=ACT, task="t", env_id="e", max_episode_steps=EPISODE_STEPS, sync=False)
        return TrainerServer(ServerConfig(bind=bind, secret_key=str(keys / "trainer.key_secret"), allow_dir=str(keys / "allow"), **FAST), store)

    server = open_server("tcp://127.0.0.1:0")
    endpoint = server.endpoint
    robot = start_robot(endpoint, tmp_path / "spool", keys, tmp_path / "robot1.log", start=0, count=400, rate=400)
    try:
        wait_for(lambda: server.store.counters["stored"] >= 50, DEADLINE_S, "a first part stored")
        server.close()  # the trainer goes away; the robot keeps spooling
        stored_first = server.store.counters["stored"]
        robot.wait_line("submitted 250")
        robot.kill()  # kill -9, mid-stream, with a spool full of unacknowledged transitions
    finally:
        robot.stop()

    spool = Spool(tmp_path / "spool")
    spooled, unacked = spool.next_seq, len(spool)
    spool.close()
    assert unacked >= 100 and spooled >= 250

    server = open_server(endpoint)
    robot = start_robot(endpoint, tmp_path / "spool", keys, tmp_path / "robot2.log", start=0, count=0, rate=1)
    try:
        wait_for(lambda: stored_first + server.store.counters["stored"] == spooled, DEADLINE_S, "the spool delivered")
        robot.wait_line("status acked=")
        wait_for(lambda: "backlog=0 " in robot.output().splitlines()[-1], DEADLINE_S, "the robot's spool empty")
    finally:
        robot.stop()
        server.close()

    # Transitions 0 .. spooled-1 reached the trainer, each once; the complete episodes are in the dataset.
    complete = spooled // EPISODE_STEPS
    assert stored_steps(tmp_path / "storage" / "dataset") == {divmod(i, EPISODE_STEPS): 1 for i in range(complete * EPISODE_STEPS)}
    assert server.store.counters["pending_episodes"] == (1 if spooled % EPISODE_STEPS else 0)


def test_a_spool_or_storage_held_by_a_running_process_is_refused_in_one_line(tmp_path):
    like = template_dataset(tmp_path / "like")
    robot = start_robot("tcp://127.0.0.1:1", tmp_path / "spool", None, tmp_path / "robot.log", start=0, count=0, rate=1)
    trainer, _ = start_trainer(tmp_path / "storage", like, None, tmp_path / "trainer.log")
    try:
        robot.wait_line("robot started")
        with pytest.raises(LinkConfigError, match=rf"^spool_dir: .*spool is already in use by pid {robot.proc.pid};"):
            ZmqTrainerLink(robot_config("tcp://127.0.0.1:1", tmp_path / "spool", keys=None))
        second = subprocess.run(
            [sys.executable, "-m", "trainer.link", "--storage", str(tmp_path / "storage"), "--like", str(like), "--insecure"],
            capture_output=True, text=True, timeout=DEADLINE_S,
        )
        assert second.returncode == 2
        assert re.fullmatch(rf"trainer\.link: .*storage/done is already in use by pid {trainer.proc.pid}; .*\n", second.stderr)
        robot.kill()  # kill -9: the kernel releases the lock with the process
    finally:
        robot.stop()
        trainer.stop()
    Spool(tmp_path / "spool").close()
