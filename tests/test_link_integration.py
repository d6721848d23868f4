"""Robot and trainer over real ZeroMQ sockets on 127.0.0.1: streaming, weights, security, bad input."""

import dataclasses
import hashlib
import logging
import os
import signal
import subprocess
import sys
import threading

import msgpack
import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from robot_node import protocol as wire
from robot_node.dataset import open_dataset
from robot_node.keys import generate, load_keypair, load_public
from robot_node.link import LinkConfigError, ZmqTrainerLink
from robot_node.link_interface import PolicyWeights, Transition
from robot_node.spec import ActionSpec
from link_helpers import (
    ACT, EPISODE_STEPS, FAST, OBS, check_episode, make_keys, robot_config, start_robot, stored_steps, stream, transition, wait_for,
)
from trainer.link import ServerConfig, ServerConfigError, TrainerServer
from trainer.transition_store import TransitionStore

DEADLINE_S = 10.0


@pytest.fixture
def keys(tmp_path):
    return make_keys(tmp_path / "keys", robots=("robot1", "robot2"))


@pytest.fixture
def cleanup():
    closers = []
    yield closers.append
    for close in reversed(closers):
        close()


def open_server(tmp_path, keys, cleanup, name="storage", bind="tcp://127.0.0.1:0"):
    store = TransitionStore(tmp_path / name, observation_spec=OBS, action_spec=ACT, task="t", env_id="e", max_episode_steps=EPISODE_STEPS, sync=False)
    secure = {"secret_key": str(keys / "trainer.key_secret"), "allow_dir": str(keys / "allow")} if keys else {"insecure": True}
    server = TrainerServer(ServerConfig(bind=bind, **secure, **FAST), store)
    cleanup(server.close)
    return server


def open_robot(server, tmp_path, keys, cleanup, robot_id="robot1", **overrides):
    link = ZmqTrainerLink(robot_config(server.endpoint, tmp_path / f"spool-{robot_id}", keys, robot_id, **overrides))
    cleanup(link.close)
    return link


def weights(version, onnx=None):
    return PolicyWeights.from_onnx(onnx or f"model {version}".encode() * 100, version=version, train_step=10 * version, observation_spec=OBS, action_spec=ACT)


def no_faults(*statuses):
    for counters in statuses:
        assert counters.get("refused", 0) == 0 and counters["internal_errors"] == 0, counters


def test_two_robots_stream_over_curve_into_one_trainer_and_both_get_its_weights(tmp_path, keys, cleanup):
    server = open_server(tmp_path, keys, cleanup)
    robots = [open_robot(server, tmp_path, keys, cleanup, robot_id) for robot_id in ("robot1", "robot2")]
    for t in stream(30):
        assert all(robot.submit(t) for robot in robots)
    wait_for(lambda: all(r.status().counters["acked"] == 30 for r in robots), DEADLINE_S, "both robots' transitions acknowledged")
    assert all(r.status().connected for r in robots)

    server.push_weights(weights(1))
    wait_for(lambda: all(r.latest_weights(0) is not None for r in robots), DEADLINE_S, "weights on both robots")
    assert all(r.latest_weights(0).onnx == weights(1).onnx for r in robots)
    wait_for(lambda: server.store.counters["episodes_written"] == 6, DEADLINE_S, "six episodes written")
    status = server.status()
    assert set(status["robots"]) == {"robot1", "robot2"}
    assert all(r["weights_seen"] == 1 for r in status["robots"].values())
    no_faults(status["counters"], *(r.status().counters for r in robots))

    counts = stored_steps(server.store.dataset_dir)
    assert counts == {(e, s): 2 for e in range(3) for s in range(EPISODE_STEPS)}  # once per robot
    check_episode(open_dataset(server.store.dataset_dir).read(0), 0)


def test_a_robot_whose_key_is_not_allowed_can_neither_connect_nor_push(tmp_path, keys, cleanup):
    generate("intruder", keys)  # a valid key pair, but not in the trainer's allow-list
    server = open_server(tmp_path, keys, cleanup)
    intruder = open_robot(server, tmp_path, keys, cleanup, "intruder")
    for t in stream(10):
        intruder.submit(t)
    wait_for(lambda: server.counters["refused.handshake"] >= 2, DEADLINE_S, "the trainer to refuse the intruder's handshake")
    wait_for(lambda: intruder.status().counters["handshake_failures"] >= 1, DEADLINE_S, "the intruder to see its refusal")

    status = intruder.status()
    assert not status.connected and status.counters["acked"] == 0 and status.counters["backlog"] == 10
    assert "handshake failed" in status.detail
    assert server.store.counters["stored"] == 0 and server.status()["robots"] == {}


def test_a_trainer_with_another_key_is_never_trusted(tmp_path, keys, cleanup):
    generate("impostor", keys)
    impostor_keys = tmp_path / "impostor"
    impostor_keys.mkdir()
    for name in ("impostor.key", "impostor.key_secret"):  # the impostor runs a trainer with its own key pair
        (impostor_keys / name.replace("impostor", "trainer")).write_bytes((keys / name).read_bytes())
    (impostor_keys / "allow").symlink_to(keys / "allow")
    impostor = open_server(tmp_path, impostor_keys, cleanup)
    impostor.push_weights(weights(1))

    robot = open_robot(impostor, tmp_path, keys, cleanup)  # expects the real trainer's public key
    robot.submit(transition(0, 0))
    wait_for(lambda: impostor.counters["refused.handshake"] >= 2, DEADLINE_S, "the handshake to fail")

    status = robot.status()
    assert not status.connected and robot.latest_weights(-1) is None
    assert status.counters["acked"] == 0 and impostor.store.counters["stored"] == 0


class FakeTrainer:
    """A hand-driven ROUTER with the trainer's key: sends whatever a test wants to a robot."""

    def __init__(self, keys, cleanup):
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.curve_server = True
        self.socket.curve_publickey, self.socket.curve_secretkey = load_keypair(keys / "trainer.key_secret")
        self.socket.linger = 0
        port = self.socket.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        cleanup(lambda: self.context.destroy(linger=0))

    def receive(self, kind, until=lambda message: True):
        while True:
            assert self.socket.poll(DEADLINE_S * 1000), f"no {kind} from the robot"
            identity, *frames = self.socket.recv_multipart()
            message = wire.parse(frames, "trainer")
            if message.kind == kind and until(message):
                return identity, message

    def send(self, identity, frames):
        self.socket.send_multipart([identity, *frames])

    def send_weights(self, identity, weights):
        for frames in wire.pack_weights(weights, "s1"):
            self.send(identity, frames)


def test_weights_whose_sha256_or_specs_do_not_match_are_refused(tmp_path, keys, cleanup):
    fake = FakeTrainer(keys, cleanup)
    robot = ZmqTrainerLink(robot_config(fake.endpoint, tmp_path / "spool", keys, peer_timeout_s=60))  # the fake sends no heartbeats
    cleanup(robot.close)
    identity, _ = fake.receive(wire.HELLO)
    fake.send(identity, wire.pack(wire.WELCOME, {"session": "s1", "accepted": True, "reason": "", "weights_version": 1}))

    corrupted = dataclasses.replace(weights(1), onnx=weights(1).onnx[:-1] + b"X")  # sha256 of the original bytes
    fake.send_weights(identity, corrupted)
    wait_for(lambda: robot.status().counters.get("refused.sha256_mismatch") == 1, DEADLINE_S, "the corrupted weights refused")
    other_specs = PolicyWeights.from_onnx(b"m" * 100, version=2, train_step=0, observation_spec=OBS, action_spec=ActionSpec(names=("a", "b")))
    fake.send_weights(identity, other_specs)
    wait_for(lambda: robot.status().counters.get("refused.spec_mismatch") == 1, DEADLINE_S, "weights for other specs refused")
    assert robot.latest_weights(-1) is None

    fake.send_weights(identity, weights(3))
    wait_for(lambda: robot.latest_weights(-1) is not None, DEADLINE_S, "good weights")
    assert robot.latest_weights(-1).version == 3
    assert robot.latest_weights(3) is None
    # The robot confirms what it has seen, so the trainer knows it may send the next version.
    _, heartbeat = fake.receive(wire.HEARTBEAT, until=lambda m: m.header["weights_seen"] == 3)
    assert heartbeat.header["weights_version"] == 3


def test_a_late_robot_gets_the_current_weights_at_once(tmp_path, keys, cleanup):
    server = open_server(tmp_path, keys, cleanup)
    model = os.urandom(3 * wire.WEIGHTS_CHUNK_BYTES + 123)  # several frames on the wire
    for version in (1, 2):
        server.push_weights(weights(version, model))
    robot = open_robot(server, tmp_path, keys, cleanup)
    took = wait_for(lambda: robot.latest_weights(0) is not None, DEADLINE_S, "the current weights on a late robot")
    assert robot.latest_weights(0).version == 2 and robot.latest_weights(0).onnx == model and took < 5.0
    assert robot.status().counters["weights_received"] == 1  # only the current version, never v1


def test_a_burst_of_ten_pushes_reaches_the_robot_as_the_newest_only(tmp_path, keys, cleanup):
    server = open_server(tmp_path, keys, cleanup)
    robot = open_robot(server, tmp_path, keys, cleanup)
    wait_for(lambda: robot.status().connected, DEADLINE_S, "the robot to connect")
    for version in range(1, 11):
        server.push_weights(weights(version))
    # The node asks between two control ticks: the first answer after the burst is v10.
    wait_for(lambda: server.status()["robots"]["robot1"]["weights_seen"] == 10, DEADLINE_S, "v10 confirmed by the robot")
    assert robot.latest_weights(0).version == 10 and robot.latest_weights(10) is None
    assert server.counters["weights_sent"] < 10  # conflated at the trainer: v1..v9 mostly never sent
    with pytest.raises(ValueError, match="not newer"):
        server.push_weights(weights(10))


def hand_driven_robot(keys, cleanup):
    """A DEALER with robot1's key: sends whatever a test wants to the trainer."""
    context = zmq.Context()
    cleanup(lambda: context.destroy(linger=0))
    sock = context.socket(zmq.DEALER)
    sock.curve_publickey, sock.curve_secretkey = load_keypair(keys / "robot1.key_secret")
    sock.curve_serverkey = load_public(keys / "trainer.key")
    return sock


def test_bad_messages_are_refused_and_counted_while_the_connection_and_stored_data_survive(tmp_path, keys, cleanup):
    server = open_server(tmp_path, keys, cleanup)
    sock = hand_driven_robot(keys, cleanup)
    sock.connect(server.endpoint)

    def send_and_receive(frames, kind, until=lambda message: True):
        sock.send_multipart(frames)
        while True:
            assert sock.poll(DEADLINE_S * 1000), f"no {kind} from the trainer"
            message = wire.parse(sock.recv_multipart(), "robot")
            if message.kind == kind and until(message):
                return message

    specs = wire.Specs(OBS, ACT)

    def batch(transitions, first_seq):
        return wire.pack_transitions("robot1", "png", specs, [(first_seq + i, wire.encode_transition(t, specs, wire.Codec())) for i, t in enumerate(transitions)])

    hello = {"robot": "robot1", "observation_spec": OBS.to_json(), "action_spec": ACT.to_json(), "weights_version": -1}
    assert send_and_receive(wire.pack(wire.HELLO, hello), wire.WELCOME).header["accepted"]
    first_half = send_and_receive(batch(stream(5), 0), wire.ACK)
    assert first_half.header["acked"] == [0, 1, 2, 3, 4]

    good = batch([transition(1, 0)], 100)
    header = msgpack.unpackb(good[0])
    undecodable = msgpack.packb({**header, "items": [{**header["items"][0], "seq": 101}]})
    nan_item = msgpack.packb({**header, "items": [{**header["items"][0], "reward": float("nan")}]})
    bad_messages = {
        "bad_header": [b"\xc1\xc1 not msgpack"],
        "schema_version": [msgpack.packb({**header, "v": 99}), *good[1:]],
        "unknown_kind": [msgpack.packb({**header, "kind": "rm -rf"}), *good[1:]],
        "frame_count": good[:1],
        "spec_mismatch": [msgpack.packb({**header, "image": {"shape": [8, 8, 3], "dtype": "uint8"}}), *good[1:]],
        "bad_image": [undecodable, b"\x89PNG\r\n\x1a\n" + b"\x00" * (len(good[1]) - 8)],
    }
    for frames in bad_messages.values():
        sock.send_multipart(frames)
    refused_nan = send_and_receive([nan_item, *good[1:]], wire.ACK, until=lambda m: m.header["rejected"] == [100])
    assert refused_nan.header["acked"] == []  # refused for good: the robot drops it from its spool

    # The same connection still works, and the first half of the episode is still there.
    send_and_receive(batch(stream(5, start=5), 5), wire.ACK, until=lambda m: m.header["acked"] == [5, 6, 7, 8, 9])
    wait_for(lambda: server.store.counters["episodes_written"] == 1, DEADLINE_S, "episode 0 written")
    counters = server.status()["counters"]
    for reason in [*bad_messages, "not_finite"]:
        assert counters.get(f"refused.{reason}") == 1, (reason, counters)
    assert counters["internal_errors"] == 0
    check_episode(open_dataset(server.store.dataset_dir).read(0), 0)


def test_frames_over_the_size_limit_never_reach_the_parser(tmp_path, keys, cleanup):
    server = open_server(tmp_path, keys, cleanup)
    sock = hand_driven_robot(keys, cleanup)
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
    sock.connect(server.endpoint)

    def next_event():
        assert monitor.poll(DEADLINE_S * 1000), "no socket event"
        return recv_monitor_message(monitor)["event"]

    assert next_event() == zmq.EVENT_HANDSHAKE_SUCCEEDED
    sock.send(b"\x00" * (2 * wire.DEFAULT_LIMITS.max_header_bytes))  # twice what a header may be
    assert next_event() == zmq.EVENT_DISCONNECTED  # libzmq cut the connection at MAXMSGSIZE
    assert server.status()["counters"].get("refused.header_size", 0) == 0  # the parser never saw it
    robot = open_robot(server, tmp_path, keys, cleanup)  # and the trainer serves on
    wait_for(lambda: robot.status().connected, DEADLINE_S, "a robot to connect after the oversized frame")


def test_a_trainer_whose_episode_writer_is_behind_holds_acks_until_it_catches_up(tmp_path, keys, cleanup):
    gate = threading.Event()
    store = TransitionStore(
        tmp_path / "storage", observation_spec=OBS, action_spec=ACT, task="t", env_id="e", max_episode_steps=EPISODE_STEPS,
        sync=False, max_queued_episodes=1, on_episode=lambda episode, record: gate.wait(DEADLINE_S),  # a stalled writer
    )
    server = TrainerServer(ServerConfig(bind="tcp://127.0.0.1:0", secret_key=str(keys / "trainer.key_secret"), allow_dir=str(keys / "allow"), **FAST), store)
    cleanup(server.close)
    cleanup(gate.set)
    robot = open_robot(server, tmp_path, keys, cleanup, batch_max=5)
    for t in stream(20):
        robot.submit(t)
    wait_for(lambda: store.busy, DEADLINE_S, "episode 1 waiting for the stalled writer")
    wait_for(lambda: robot.status().counters["acked"] == 20, DEADLINE_S, "the first two episodes acknowledged")
    for t in stream(30, start=20):
        robot.submit(t)
    wait_for(lambda: server.counters["deferred"] > 0, DEADLINE_S, "transitions held back")
    assert robot.status().counters["acked"] == 20 and robot.status().connected  # held, yet alive

    gate.set()
    wait_for(lambda: robot.status().counters["acked"] == 50, DEADLINE_S, "every transition acknowledged")
    wait_for(lambda: store.counters["episodes_written"] == 5, DEADLINE_S, "five episodes written")
    assert stored_steps(store.dataset_dir) == {divmod(i, EPISODE_STEPS): 1 for i in range(50)}


def test_running_without_keys_needs_an_explicit_insecure_flag(tmp_path, cleanup, caplog):
    with pytest.raises(LinkConfigError, match="insecure"):
        ZmqTrainerLink(dataclasses.replace(robot_config("tcp://127.0.0.1:1", tmp_path / "spool", None), insecure=False))
    store = TransitionStore(tmp_path / "s", observation_spec=OBS, action_spec=ACT, task="t", env_id="e", max_episode_steps=10, sync=False)
    cleanup(store.close)
    with pytest.raises(ServerConfigError, match="--insecure"):
        TrainerServer(ServerConfig(bind="tcp://127.0.0.1:0"), store)

    with caplog.at_level(logging.WARNING):
        server = open_server(tmp_path, None, cleanup, name="insecure")
        robot = open_robot(server, tmp_path, None, cleanup)
    assert caplog.text.count("WITHOUT authentication or encryption") == 2
    robot.submit(transition(0, 0))
    wait_for(lambda: robot.status().counters["acked"] == 1, DEADLINE_S, "a transition over the insecure link")


def test_the_trainer_command_line_names_a_missing_key_in_one_line(tmp_path, keys):
    from link_helpers import template_dataset

    like = template_dataset(tmp_path / "like")
    done = subprocess.run(
        [sys.executable, "-m", "trainer.link", "--storage", str(tmp_path / "s"), "--like", str(like), "--key", str(tmp_path / "nope.key_secret"), "--allow", str(keys / "allow")],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [f"trainer.link: {tmp_path / 'nope.key_secret'}: no such key file (create one with `o2o-keys generate NAME --out DIR`)"]


@pytest.mark.integration
def test_a_silent_trainer_is_detected_within_the_deadline_and_the_robot_recovers(tmp_path, keys, cleanup):
    from link_helpers import start_trainer, template_dataset

    trainer, endpoint = start_trainer(tmp_path / "storage", template_dataset(tmp_path / "like"), keys, tmp_path / "trainer.log")
    cleanup(trainer.stop)
    robot = ZmqTrainerLink(robot_config(endpoint, tmp_path / "spool", keys))
    cleanup(robot.close)
    wait_for(lambda: robot.status().connected, DEADLINE_S, "the robot to connect")

    os.kill(trainer.proc.pid, signal.SIGSTOP)  # alive for TCP, silent for the protocol
    try:
        lost_after = wait_for(lambda: not robot.status().connected, DEADLINE_S, "the robot to notice")
        assert lost_after <= FAST["peer_timeout_s"] + 1.0
        assert "no message from the trainer" in robot.status().detail
        wait_for(lambda: robot.status().counters["disconnects"] == 1, DEADLINE_S, "the link thread to drop the connection")  # status() may see the deadline pass a poll earlier
        for t in stream(10):
            robot.submit(t)
    finally:
        os.kill(trainer.proc.pid, signal.SIGCONT)
    wait_for(lambda: robot.status().connected, DEADLINE_S, "the robot to reconnect")
    wait_for(lambda: robot.status().counters["acked"] == 10, DEADLINE_S, "the spooled transitions acknowledged")
    assert robot.status().counters["disconnects"] == 1


@pytest.mark.integration
def test_a_silent_robot_is_detected_by_the_trainer_and_welcomed_back(tmp_path, keys, cleanup, caplog):
    server = open_server(tmp_path, keys, cleanup)
    robot = start_robot(server.endpoint, tmp_path / "spool", keys, tmp_path / "robot.log", start=0, count=0, rate=1)
    cleanup(robot.stop)
    wait_for(lambda: "robot1" in server.status()["robots"], DEADLINE_S, "the robot to connect")

    with caplog.at_level(logging.WARNING, logger="trainer.link"):
        os.kill(robot.proc.pid, signal.SIGSTOP)
        try:
            lost_after = wait_for(lambda: "robot1" not in server.status()["robots"], DEADLINE_S, "the trainer to notice")
        finally:
            os.kill(robot.proc.pid, signal.SIGCONT)
    assert lost_after <= FAST["peer_timeout_s"] + 1.0
    assert server.counters["robots_lost"] == 1 and "robot robot1 lost" in caplog.text
    wait_for(lambda: "robot1" in server.status()["robots"], DEADLINE_S, "the robot back")


def test_a_robot_key_added_to_the_allow_list_is_let_in_without_a_restart(tmp_path, keys, cleanup, caplog):
    generate("robot3", keys)  # not allowed yet
    server = open_server(tmp_path, keys, cleanup)
    newcomer = open_robot(server, tmp_path, keys, cleanup, "robot3")
    for t in stream(EPISODE_STEPS):
        newcomer.submit(t)
    wait_for(lambda: newcomer.status().counters["handshake_failures"] >= 1, DEADLINE_S, "robot3 refused at first")

    caplog.set_level(logging.INFO, logger="trainer.link")
    (keys / "allow" / "robot3.key").write_bytes((keys / "robot3.key").read_bytes())
    wait_for(lambda: newcomer.status().counters["acked"] == EPISODE_STEPS, DEADLINE_S, "robot3's transitions acknowledged")
    assert newcomer.status().connected
    assert any("reloaded: 3 robot keys (added: robot3.key; removed: none)" in r.getMessage() for r in caplog.records)
    assert server.store.counters["stored"] == EPISODE_STEPS

    newcomer.close()  # revoked: refused from its next connection on
    (keys / "allow" / "junk.key").write_text("not a key\n")  # a file that does not read keeps the old keys in force
    (keys / "allow" / "robot3.key").unlink()
    wait_for(lambda: any("previous keys stay in force: No public key found" in r.getMessage() for r in caplog.records), DEADLINE_S, "a warning")
    (keys / "allow" / "junk.key").unlink()
    wait_for(lambda: any("removed: robot3.key" in r.getMessage() for r in caplog.records), DEADLINE_S, "the allow-list reloaded")
    again = open_robot(server, tmp_path, keys, cleanup, "robot3")
    wait_for(lambda: again.status().counters["handshake_failures"] >= 1, DEADLINE_S, "robot3 refused after revocation")
    assert not again.status().connected


def test_an_allow_list_with_a_file_that_is_not_a_key_stops_the_trainer_at_start_up(tmp_path, keys):
    (keys / "allow" / "notes.key").write_text("robot1 is the arm by the window\n")
    store = TransitionStore(tmp_path / "storage", observation_spec=OBS, action_spec=ACT, task="t", env_id="e", max_episode_steps=EPISODE_STEPS, sync=False)
    with pytest.raises(ServerConfigError, match=r"allow-list .*allow: No public key found in .*notes\.key"):
        TrainerServer(ServerConfig(bind="tcp://127.0.0.1:0", secret_key=str(keys / "trainer.key_secret"), allow_dir=str(keys / "allow")), store)
    store.close()


def test_an_allowed_key_cannot_speak_for_another_robot(tmp_path, keys, cleanup):
    server = open_server(tmp_path, keys, cleanup)
    honest = open_robot(server, tmp_path, keys, cleanup, "robot1")
    wait_for(lambda: honest.status().connected, DEADLINE_S, "robot1 connected")
    config = dataclasses.replace(robot_config(server.endpoint, tmp_path / "spool-impostor", keys, "robot1"), secret_key=str(keys / "robot2.key_secret"))
    impostor = ZmqTrainerLink(config)  # robot2's key, robot1's name
    cleanup(impostor.close)
    impostor.submit(transition(0, 0))
    wait_for(lambda: server.counters["refused.robot_id"] >= 1, DEADLINE_S, "the impostor's hello refused")
    # The trainer counts the refusal before its answer reaches the robot: wait for the answer too.
    wait_for(lambda: "authenticated by the key in robot2.key said hello as 'robot1'" in impostor.status().detail, DEADLINE_S, "the refusal at the impostor")
    assert not impostor.status().connected and impostor.status().counters["acked"] == 0
    assert honest.status().connected and set(server.status()["robots"]) == {"robot1"}
