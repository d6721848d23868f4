"""The trainer's end of the link: a ROUTER that many robots stream into and that pushes weights.

One thread owns the socket. Per robot it keeps who it is (from HELLO), when it was last heard
and which weights version it has seen. Transitions are decoded and checked, written ahead to
the TransitionStore and only then acknowledged; bad items are refused (counted, logged once per
reason per interval) and acknowledged as refused so the robot stops resending them. Weights are
conflated at the source: a robot gets the newest version, and a newer one only after it has
confirmed the previous, so a burst of pushes costs each robot at most two transfers.

Run it on its own (the trainer can also embed TrainerServer):

    python -m trainer.link --storage runs/robot_data --like data/offline \\
        --bind tcp://*:5555 --key keys/trainer.key_secret --allow keys/robots
"""

from __future__ import annotations

import argparse
import collections
import logging
import secrets
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
from zmq.auth import load_certificate
from zmq.auth.thread import ThreadAuthenticator

from robot_node import protocol as wire
from robot_node.counters import Counters, Refusals
from robot_node.dataset import DatasetError, open_dataset
from robot_node.keys import HANDSHAKE_FAILED, KeyFileError, failed_handshakes, load_keypair
from robot_node.link_interface import PolicyWeights
from robot_node.throttled_log import ThrottledLog
from trainer.transition_store import StoreError, TransitionStore

log = logging.getLogger(__name__)

POLL_S = 0.005
DRAIN_MAX = 256
DEFERRED_MAX = 4096  # transition messages held while the store is busy; beyond, they are resent later
HOUSEKEEPING_S = 1.0


class ServerConfigError(ValueError):
    """The server cannot start as configured."""


@dataclass
class ServerConfig:
    bind: str = "tcp://*:5555"
    secret_key: str | None = None  # the trainer's NAME.key_secret
    allow_dir: str | None = None  # the robots' public NAME.key files: only these may connect
    insecure: bool = False  # no CURVE: anyone who reaches the port can stream or listen
    heartbeat_s: float = 0.5
    peer_timeout_s: float = 3.0  # silence after which a robot counts as gone
    report_every_s: float = 30.0  # the periodic log line with rates
    limits: wire.Limits = field(default_factory=wire.Limits)


@dataclass
class _Robot:
    robot_id: str
    last_heard: float
    last_heartbeat: float = 0.0
    sent_version: int = -1  # newest weights sent on this connection (or held by the robot)
    weights_seen: int = -1  # newest weights the robot confirmed receiving
    backlog: int = 0  # transitions waiting in the robot's spool


class TrainerServer:
    def __init__(self, config: ServerConfig, store: TransitionStore) -> None:
        """Binds at once (`endpoint` is the address actually bound); `close()` also closes the store."""
        self.config = config
        self.store = store
        self.session = secrets.token_hex(8)
        self.counters = Counters(("robots_connected", "robots_lost", "unknown_peer", "send_dropped", "weights_sent", "deferred", "internal_errors"))
        self._refusals = Refusals(self.counters, log)
        self._warn = ThrottledLog(log, 10.0)
        self._robots: dict[bytes, _Robot] = {}  # by ZeroMQ routing id
        self._deferred: collections.deque[tuple[bytes, wire.Message]] = collections.deque()
        self._weights_lock = threading.Lock()
        self._weights: tuple[PolicyWeights, list[list[bytes]]] | None = None
        self._context = zmq.Context()
        self._auth: ThreadAuthenticator | None = None
        self._allowed: dict[str, float] | None = None  # the allow-list as loaded: key file name -> mtime
        self._key_names: dict[str, str] | None = None  # with CURVE: z85 public key -> the robot its key file names
        try:
            self._socket = self._bind()
        except Exception:
            self._shutdown_zmq()
            raise
        self.endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._monitor = self._socket.get_monitor_socket(HANDSHAKE_FAILED)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trainer-link", daemon=True)
        self._thread.start()

    def push_weights(self, weights: PolicyWeights) -> None:
        """Offer new weights to every robot, now and on every (re)connection; versions must increase.
        (The robot checks the sha256; hashing here as well would add 20 ms to a 41 MB push.)"""
        if (weights.observation_spec, weights.action_spec) != (self.store.specs.observation, self.store.specs.action):
            raise ValueError(f"weights v{weights.version} are for other specs than this trainer's robots")
        if len(weights.onnx) > self.config.limits.max_weights_bytes:
            raise ValueError(f"weights of {len(weights.onnx)} bytes exceed the limit of {self.config.limits.max_weights_bytes}")
        messages = wire.pack_weights(weights, self.session)
        with self._weights_lock:
            if self._weights is not None and weights.version <= self._weights[0].version:
                raise ValueError(f"weights v{weights.version} are not newer than v{self._weights[0].version}")
            self._weights = (weights, messages)

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        robots = {
            r.robot_id: {"last_heard_s": round(now - r.last_heard, 3), "weights_seen": r.weights_seen, "backlog": r.backlog}
            for r in list(self._robots.values())
        }
        counters = {**self.counters.snapshot(), **self.store.counters.snapshot()}
        counters["refused"] = self._refusals.total()
        return {"endpoint": self.endpoint, "session": self.session, "robots": robots, "counters": counters}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.store.close()
        self._report(None)

    # ------------------------------------------------------------------ the link thread

    def _bind(self) -> zmq.Socket:
        cfg = self.config
        keys = None if cfg.insecure else _server_keys(cfg)
        sock = self._context.socket(zmq.ROUTER)
        sock.linger = 0
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a send to a vanished robot fails instead of vanishing
        sock.setsockopt(zmq.MAXMSGSIZE, cfg.limits.max_frame_bytes(self.store.specs.observation))
        sock.setsockopt(zmq.HANDSHAKE_IVL, int(cfg.peer_timeout_s * 1000))
        if keys is None:
            log.warning("trainer link on %s runs WITHOUT authentication or encryption (--insecure): anyone who reaches it can stream data or read weights", cfg.bind)
        else:
            public, secret, allow_dir = keys
            self._auth = ThreadAuthenticator(self._context, log=logging.getLogger("trainer.link.auth"))
            self._auth.start()
            self._load_allow_list(allow_dir, at_start=True)
            sock.curve_server = True
            sock.curve_publickey, sock.curve_secretkey = public, secret
        try:
            sock.bind(cfg.bind)
        except zmq.ZMQError as exc:
            raise ServerConfigError(f"cannot listen on {cfg.bind}: {exc}") from None
        return sock

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        last_housekeeping = last_report = time.monotonic()
        stored_at_report = 0
        while not self._stop.is_set():
            try:
                ready = dict(poller.poll(POLL_S * 1000))
                if self._monitor in ready:
                    self._monitor_events()
                arrived: list[tuple[bytes, wire.Message]] = []
                for _ in range(DRAIN_MAX):
                    try:
                        parts = self._socket.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    user = parts[-1].get("User-Id") if self._key_names is not None else None  # the key ZAP accepted
                    self._handle(parts[0].bytes, [part.bytes for part in parts[1:]], arrived, user)
                self._transitions(arrived)
                self._take_deferred()
                now = time.monotonic()
                self._keep_alive(now)
                self._send_weights()
                if now - last_housekeeping > HOUSEKEEPING_S:
                    self.store.housekeeping()
                    if self._auth is not None:
                        self._load_allow_list(Path(self.config.allow_dir))
                    last_housekeeping = now
                if now - last_report > self.config.report_every_s:
                    stored = self.store.counters["stored"]
                    self._report((stored - stored_at_report) / (now - last_report))
                    last_report, stored_at_report = now, stored
            except Exception:  # a bug must not stop the trainer from receiving
                self.counters.inc("internal_errors")
                log.exception("trainer link: unexpected error; continuing")
                self._stop.wait(0.1)
        self._shutdown_zmq()

    def _handle(self, identity: bytes, frames: list[bytes], arrived: list[tuple[bytes, wire.Message]], user: str | None = None) -> None:
        """Answer one message; TRANSITIONS go to `arrived`, stored together after the drain."""
        robot = self._robots.get(identity)
        source = f"robot {robot.robot_id}" if robot else f"peer {identity.hex()}"
        try:
            message = wire.parse(frames, "trainer", self.config.limits)
        except wire.ProtocolError as exc:
            self._refusals.refuse(exc.reason, f"{source}: {exc}")
            return
        if message.kind == wire.HELLO:
            self._hello(identity, message.header, user)
            return
        if robot is None:  # this trainer restarted, or declared the robot lost: it must say HELLO again
            self.counters.inc("unknown_peer")
            self._send(identity, wire.pack(wire.WELCOME, {**self._heartbeat_fields(), "accepted": False, "reason": "unknown connection, send hello"}))
            return
        if message.header["robot"] != robot.robot_id:
            self._refusals.refuse("robot_id", f"{source} sent a message as {message.header['robot']!r}")
            return
        robot.last_heard = time.monotonic()
        if message.kind == wire.HEARTBEAT:
            robot.weights_seen = max(robot.weights_seen, message.header["weights_seen"])
            robot.backlog = message.header["backlog"]
        elif message.kind == wire.TRANSITIONS:
            if not self._deferred and not self.store.busy:
                arrived.append((identity, message))
            elif len(self._deferred) < DEFERRED_MAX:  # held, not acknowledged: the robot's window fills and it waits
                self._deferred.append((identity, message))
            else:
                self._refusals.refuse("busy", f"robot {robot.robot_id}: the episode writer is behind; the robot will resend")

    def _take_deferred(self) -> None:
        while self._deferred and not self.store.busy:
            self._transitions([self._deferred.popleft()])
        self.counters.set("deferred", len(self._deferred))

    def _hello(self, identity: bytes, header: dict[str, Any], user: str | None) -> None:
        robot_id = header["robot"]
        try:
            if self._key_names is not None and self._key_names.get(user) != robot_id:  # one allowed key must not speak for another robot
                owner = self._key_names.get(user)
                key = f"the key in {owner}.key" if owner else "a key no longer in the allow-list"
                raise wire.ProtocolError("robot_id", f"a robot authenticated by {key} said hello as {robot_id!r}; name each robot's allow-list key file after its robot_id")
            specs = wire.parse_specs(header)
            if specs != (self.store.specs.observation, self.store.specs.action):
                raise wire.ProtocolError("spec_mismatch", f"robot {robot_id} runs {specs[0]}, {specs[1]}; this trainer's data is {self.store.specs.observation}, {self.store.specs.action}")
        except wire.ProtocolError as exc:
            self._refusals.refuse(exc.reason, str(exc))
            self._send(identity, wire.pack(wire.WELCOME, {**self._heartbeat_fields(), "accepted": False, "reason": str(exc)}))
            return
        for other, robot in list(self._robots.items()):
            if robot.robot_id == robot_id and other != identity:
                del self._robots[other]  # the same robot on a fresh connection
        if identity not in self._robots:
            log.info("robot %s connected", robot_id)
            self.counters.inc("robots_connected")
        version = header["weights_version"]
        self._robots[identity] = _Robot(robot_id, time.monotonic(), sent_version=version, weights_seen=version)
        self._send(identity, wire.pack(wire.WELCOME, {**self._heartbeat_fields(), "accepted": True, "reason": ""}))

    def _transitions(self, arrived: list[tuple[bytes, wire.Message]]) -> None:
        """Decode, log (one write and fsync for all: group commit), then acknowledge each message."""
        decoded: list[tuple[bytes, _Robot, str, list[wire.DecodedItem]]] = []
        for identity, message in arrived:
            robot = self._robots.get(identity)
            if robot is None:  # it reconnected meanwhile and will resend
                continue
            try:
                items = wire.decode_transitions(message, self.store.specs)
            except wire.ProtocolError as exc:  # not even the layout is right: nothing to acknowledge
                self._refusals.refuse(exc.reason, f"robot {robot.robot_id}: {exc}")
                continue
            for d in items:
                if d.error is not None:
                    self._refusals.refuse(d.error.reason, f"robot {robot.robot_id}, transition {d.seq}: {d.error}")
            decoded.append((identity, robot, message.header["codec"], items))
        if not decoded:
            return
        try:
            results = self.store.add([(robot.robot_id, codec, [d for d in items if d.error is None]) for _, robot, codec, items in decoded])
        except OSError as exc:  # not stored, so not acknowledged: the robots send them again
            self._refusals.refuse("storage", f"cannot log transitions: {exc}")
            return
        for (identity, robot, _, items), (acked, refused) in zip(decoded, results):
            for seq in refused:
                self._refusals.refuse("episode_too_long", f"robot {robot.robot_id}, transition {seq}: step beyond {self.store.max_steps}")
            rejected = refused + [d.seq for d in items if d.error is not None]
            self._send(identity, wire.pack(wire.ACK, {"session": self.session, "acked": acked, "rejected": rejected}))

    def _keep_alive(self, now: float) -> None:
        for identity, robot in list(self._robots.items()):
            if now - robot.last_heard > self.config.peer_timeout_s:
                log.warning("robot %s lost: no message for %.1f s", robot.robot_id, now - robot.last_heard)
                self.counters.inc("robots_lost")
                del self._robots[identity]
            elif now - robot.last_heartbeat >= self.config.heartbeat_s:
                self._send(identity, wire.pack(wire.HEARTBEAT, self._heartbeat_fields()))
                robot.last_heartbeat = now

    def _send_weights(self) -> None:
        with self._weights_lock:
            current = self._weights
        if current is None:
            return
        weights, messages = current
        for identity, robot in list(self._robots.items()):
            in_flight = robot.weights_seen < robot.sent_version
            if robot.sent_version < weights.version and not in_flight and all(self._send(identity, m) for m in messages):
                robot.sent_version = weights.version  # else the robot drops the partial copy when it gets chunk 0 again
                self.counters.inc("weights_sent")

    def _heartbeat_fields(self) -> dict[str, Any]:
        with self._weights_lock:
            version = self._weights[0].version if self._weights is not None else -1
        return {"session": self.session, "weights_version": version}

    def _send(self, identity: bytes, frames: list[bytes]) -> bool:
        try:
            self._socket.send_multipart([identity, *frames], zmq.NOBLOCK, copy=max(map(len, frames)) < 1 << 16)  # weights: no copy
            return True
        except zmq.Again:  # the robot is not reading; it will be declared lost if it stays so
            self.counters.inc("send_dropped")
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            self._robots.pop(identity, None)  # disconnected
        return False

    def _monitor_events(self) -> None:
        for endpoint in failed_handshakes(self._monitor):
            self._refusals.refuse("handshake", f"a peer failed the CURVE handshake on {endpoint} (key not in the allow-list, or a wrong trainer key)")

    def _report(self, rate: float | None) -> None:
        c = self.status()["counters"]
        now = f"{len(self._robots)} robots, {rate:.0f} transitions/s" if rate is not None else "closed"
        log.info(
            "link: %s; stored %d (duplicates %d, refused %d), episodes written %d, pending %d",
            now, c["stored"], c["duplicates"], c["refused"], c["episodes_written"], c["pending_episodes"],
        )

    def _load_allow_list(self, allow_dir: Path, *, at_start: bool = False) -> None:
        """(Re)load the robots' public keys when the directory's key files changed, so a robot is
        added or revoked without restarting the trainer. The authenticator checks keys at each
        handshake: a revoked robot that is connected stays so until it reconnects. A file that
        does not read (half copied, not a key) keeps the previous keys in force, with a warning,
        and is tried again at the next housekeeping."""
        try:
            files = {path.name: path.stat().st_mtime for path in allow_dir.glob("*.key")}
            if files == self._allowed:
                return
            names = {load_certificate(allow_dir / name)[0].decode(): Path(name).stem for name in files}
        except (OSError, ValueError) as exc:
            if at_start:
                raise ServerConfigError(f"allow-list {allow_dir}: {exc}") from None
            self._warn.warning("allow_list", f"allow-list {allow_dir} not reloaded, the previous keys stay in force: {exc}")
            return
        self._auth.certs["*"] = {key.encode(): True for key in names}  # one assignment: the ZAP thread sees the old set or the new one
        self._key_names = names
        if self._allowed is not None:
            added, removed = sorted(files.keys() - self._allowed.keys()), sorted(self._allowed.keys() - files.keys())
            log.info("allow-list %s reloaded: %d robot keys (added: %s; removed: %s)", allow_dir, len(files), ", ".join(added) or "none", ", ".join(removed) or "none")
        self._allowed = files

    def _shutdown_zmq(self) -> None:
        if self._auth is not None:
            self._auth.stop()
        self._context.destroy(linger=0)  # closes this context's sockets, then terminates it


def _server_keys(config: ServerConfig) -> tuple[bytes, bytes, Path]:
    if not (config.secret_key and config.allow_dir):
        raise ServerConfigError("the trainer link needs --key (the trainer's NAME.key_secret) and --allow (a directory of robot public keys); pass --insecure to run without")
    allow_dir = Path(config.allow_dir)
    if not allow_dir.is_dir() or not any(allow_dir.glob("*.key")):
        raise ServerConfigError(f"{allow_dir}: no robot public keys (*.key) to allow; copy each robot's NAME.key there")
    try:
        public, secret = load_keypair(config.secret_key)
    except KeyFileError as exc:
        raise ServerConfigError(str(exc)) from None
    return public, secret, allow_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.link", description="Receive robots' transitions into a dataset and serve weights.")
    parser.add_argument("--storage", required=True, help="directory for the write-ahead log and the robots' episode dataset")
    parser.add_argument("--like", help="a dataset whose task, env id and specs the robots' episodes share (needed on first start)")
    parser.add_argument("--bind", default="tcp://*:5555", help="ZeroMQ endpoint to listen on (port 0: any free port)")
    parser.add_argument("--key", help="the trainer's NAME.key_secret (from o2o-keys generate)")
    parser.add_argument("--allow", help="directory of the robots' public NAME.key files")
    parser.add_argument("--insecure", action="store_true", help="no authentication or encryption (trusted networks only)")
    parser.add_argument("--heartbeat", type=float, default=0.5, help="seconds between heartbeats")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds of silence after which a robot counts as gone")
    parser.add_argument("--no-sync", action="store_true", help="do not fsync before acknowledging (survives a crash, not power loss)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        template = open_dataset(args.like if args.like else Path(args.storage) / "dataset")
    except DatasetError as exc:
        hint = "" if args.like else " (pass --like DATASET the first time)"
        print(f"trainer.link: {exc}{hint}", file=sys.stderr)
        return 2
    config = ServerConfig(bind=args.bind, secret_key=args.key, allow_dir=args.allow, insecure=args.insecure, heartbeat_s=args.heartbeat, peer_timeout_s=args.timeout)
    try:
        store = TransitionStore.like(args.storage, template, sync=not args.no_sync)
    except (StoreError, DatasetError, OSError) as exc:
        print(f"trainer.link: {exc}", file=sys.stderr)
        return 2
    try:
        server = TrainerServer(config, store)
    except (ServerConfigError, KeyFileError) as exc:
        store.close()
        print(f"trainer.link: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"listening on {server.endpoint}", flush=True)
    stop.wait()
    server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
