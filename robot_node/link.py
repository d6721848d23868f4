"""The robot's end of the link: a TrainerLink that streams transitions to the trainer over ZeroMQ.

The control loop only touches a lock-free queue (`submit`) and the newest verified weights
(`latest_weights`); everything else happens on one background thread that owns the socket:

    submit() -> queue -> [link thread] encode -> spool (disk) -> send in batches -> trainer
                                        spool  <- forget  <- ACK (stored or refused for good)
    latest_weights() <- newest verified weights <- WEIGHTS chunks <- trainer (hashed as they arrive, stale versions skipped)

Delivery is at-least-once: a transition leaves the spool only when the trainer acknowledges
it, and after every (re)connection everything unacknowledged is sent again; the trainer
de-duplicates. A trainer that falls silent for `peer_timeout_s` is declared lost, the socket is
replaced (a fresh connection, nothing stale queued) and HELLO repeats until a WELCOME comes.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import zmq

from robot_node import protocol as wire
from robot_node.counters import Counters, Refusals
from robot_node.keys import HANDSHAKE_FAILED, KeyFileError, failed_handshakes, load_keypair, load_public
from robot_node.link_interface import LinkStatus, PolicyWeights, Transition
from robot_node.spec import ActionSpec, ObservationSpec
from robot_node.record_log import LogInUseError, RecordFormatError
from robot_node.spool import Spool

log = logging.getLogger(__name__)

POLL_S = 0.005  # the link thread's idle wake-up period
DRAIN_MAX = 256  # messages handled per wake-up before new transitions get a turn
ZERO_COPY_BYTES = 1 << 16  # received frames larger than this are used in place, not copied


class LinkConfigError(ValueError):
    """The link cannot start as configured (missing keys, bad codec, ...)."""


@dataclass
class LinkConfig:
    endpoint: str  # the trainer, e.g. "tcp://trainer.local:5555"
    robot_id: str
    spool_dir: str
    observation_spec: ObservationSpec
    action_spec: ActionSpec
    secret_key: str | None = None  # this robot's NAME.key_secret
    trainer_key: str | None = None  # the trainer's public NAME.key
    insecure: bool = False  # no CURVE: anyone on the network can read and inject; opt in explicitly
    codec: wire.Codec = field(default_factory=wire.Codec)
    batch_max: int = 64  # transitions per message when the rate is high
    max_in_flight: int = 2048  # sent but not yet acknowledged
    queue_max: int = 10_000  # submitted but not yet spooled; beyond it submit() drops
    spool_max_bytes: int = 1 << 30
    spool_sync: bool = False  # fsync the spool: survives power loss, not only a node restart
    heartbeat_s: float = 0.5
    peer_timeout_s: float = 3.0  # silence after which the trainer counts as gone
    ack_timeout_s: float = 10.0  # unacknowledged this long on a live connection: send again
    weights_version: int = -1  # the policy version the node starts with; never sent to it again
    limits: wire.Limits = field(default_factory=wire.Limits)


class ZmqTrainerLink:
    """TrainerLink over ZeroMQ (DEALER to the trainer's ROUTER), CURVE-authenticated by default."""

    def __init__(self, config: LinkConfig) -> None:
        self.config = config
        self._curve = _client_keys(config)
        self._specs = wire.Specs(config.observation_spec, config.action_spec, config.limits)
        self.counters = Counters(
            ("submitted", "dropped", "spooled", "spool_dropped", "sent", "sent_bytes", "resent", "acked", "rejected_by_trainer", "backlog")
            + ("weights_received", "weights_conflated", "disconnects", "handshake_failures", "internal_errors")
        )
        self._refusals = Refusals(self.counters, log)
        self._queue: collections.deque[Transition] = collections.deque()  # append/popleft are atomic
        self._weights_lock = threading.Lock()
        self._weights: PolicyWeights | None = None
        self._weights_in = wire.WeightsReceiver(config.limits)
        try:
            self._spool = Spool(config.spool_dir, max_bytes=config.spool_max_bytes, sync=config.spool_sync)
        except (RecordFormatError, LogInUseError) as exc:
            raise LinkConfigError(f"spool_dir: {exc}") from None
        self.counters.set("backlog", len(self._spool))
        # Link-thread state.
        self._held_version = config.weights_version
        self._weights_seen = config.weights_version
        self._session: str | None = None
        self._problem = "waiting for the trainer's welcome"
        self._last_heard = self._last_hello = self._last_heartbeat = self._socket_opened = 0.0
        self._to_send: collections.deque[int] = collections.deque()
        self._in_flight: dict[int, float] = {}
        self._context = zmq.Context()
        self._socket: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None
        self._poller = zmq.Poller()
        self._stop = threading.Event()
        try:  # here, not on the link thread: an address libzmq refuses is the caller's error
            self._open_socket()
        except zmq.ZMQError as exc:
            self._close_socket()
            self._context.destroy(linger=0)
            self._spool.close()
            raise LinkConfigError(f"endpoint {config.endpoint!r} is not an address to connect to ({exc}); e.g. tcp://trainer.local:5555") from None
        self._thread = threading.Thread(target=self._run, name=f"trainer-link-{config.robot_id}", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- the control loop's side

    def submit(self, transition: Transition) -> bool:
        if len(self._queue) >= self.config.queue_max:
            self.counters.inc("dropped")
            return False
        self._queue.append(transition)
        self.counters.inc("submitted")
        return True

    def latest_weights(self, newer_than: int) -> PolicyWeights | None:
        with self._weights_lock:
            weights = self._weights
        return weights if weights is not None and weights.version > newer_than else None

    def status(self) -> LinkStatus:
        counters = self.counters.snapshot()
        counters["refused"] = self._refusals.total()
        age = time.monotonic() - self._last_heard
        connected = self._session is not None and age < self.config.peer_timeout_s
        if connected:
            detail = f"connected to {self.config.endpoint}, last message {age:.1f} s ago, {counters['backlog']} unacknowledged"
        else:
            problem = self._problem if self._session is None else f"no message from the trainer for {age:.1f} s"
            detail = f"not connected to {self.config.endpoint}: {problem}; {counters['backlog']} transitions spooled"
        return LinkStatus(connected=connected, detail=detail, counters=counters)

    def close(self) -> None:
        """Stop the link thread; what is queued goes to the spool and is sent after the next start."""
        self._stop.set()
        self._thread.join(timeout=30)

    # ---------------------------------------------------------------- the link thread

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._spool_submitted()
                now = time.monotonic()
                self._keep_alive(now)
                self._send_transitions(now)
                busy = self._queue or (self._session and self._to_send and len(self._in_flight) < self.config.max_in_flight)
                self._receive(0 if busy else POLL_S)
            except Exception:  # a bug must not end streaming for the rest of the run
                self.counters.inc("internal_errors")
                log.exception("trainer link: unexpected error; continuing")
                self._stop.wait(0.1)
        try:
            while self._queue:
                self._spool_submitted()
        finally:
            self._close_socket()
            self._context.destroy(linger=0)
            self._spool.close()

    def _spool_submitted(self) -> None:
        batch: list[wire.EncodedTransition] = []
        while self._queue and len(batch) < 4 * self.config.batch_max:
            transition = self._queue.popleft()
            try:
                batch.append(wire.encode_transition(transition, self._specs, self.config.codec))
            except wire.ProtocolError as exc:
                self._refusals.refuse(exc.reason, f"not streamed: {exc}")
        if not batch:
            return
        try:
            seqs = self._spool.append(batch)
        except OSError as exc:
            self._refusals.refuse("spool_write", f"{len(batch)} transitions lost, the spool cannot be written: {exc}", n=len(batch))
            return
        self.counters.inc("spooled", len(seqs))
        self.counters.set("spool_dropped", self._spool.dropped)
        self.counters.set("backlog", len(self._spool))
        if self._session is not None:
            self._to_send.extend(seqs)

    def _keep_alive(self, now: float) -> None:
        cfg = self.config
        if self._session is None:
            if now - self._socket_opened > cfg.peer_timeout_s:
                self._open_socket()  # no welcome on this connection: start over on a fresh one
            if now - self._last_hello >= cfg.heartbeat_s:
                fields = {
                    "robot": cfg.robot_id,
                    "observation_spec": cfg.observation_spec.to_json(),
                    "action_spec": cfg.action_spec.to_json(),
                    "weights_version": self._held_version,
                }
                if self._send(wire.pack(wire.HELLO, fields)):
                    self._last_hello = now
            return
        if now - self._last_heard > cfg.peer_timeout_s:
            self._lose(f"no message from the trainer for {now - self._last_heard:.1f} s")
            self._open_socket()
            return
        if now - self._last_heartbeat >= cfg.heartbeat_s:
            self._send_heartbeat(now)
        if self._in_flight and now - next(iter(self._in_flight.values())) > cfg.ack_timeout_s:
            log.warning("trainer link: no acknowledgement for %.0f s; sending the %d unacknowledged transitions again", cfg.ack_timeout_s, len(self._spool))
            self._requeue()

    def _send_heartbeat(self, now: float) -> None:
        fields = {"robot": self.config.robot_id, "weights_version": self._held_version, "weights_seen": self._weights_seen, "backlog": len(self._spool)}
        if self._send(wire.pack(wire.HEARTBEAT, fields)):
            self._last_heartbeat = now

    def _send_transitions(self, now: float) -> None:
        cfg = self.config
        while self._session is not None and self._to_send and len(self._in_flight) < cfg.max_in_flight:
            batch: list[tuple[int, wire.EncodedTransition]] = []
            while self._to_send and len(batch) < cfg.batch_max:
                seq = self._to_send.popleft()
                encoded = self._spool.get(seq)
                if encoded is not None:  # else acknowledged or dropped meanwhile
                    batch.append((seq, encoded))
            if not batch:
                return
            frames = wire.pack_transitions(cfg.robot_id, cfg.codec.name, self._specs, batch)
            if not self._send(frames):
                self._to_send.extendleft(reversed([seq for seq, _ in batch]))
                return
            for seq, _ in batch:
                self._in_flight[seq] = now
            self.counters.inc("sent", len(batch))
            self.counters.inc("sent_bytes", sum(len(f) for f in frames))

    def _receive(self, timeout_s: float) -> None:
        ready = dict(self._poller.poll(timeout_s * 1000))
        if self._monitor in ready:
            self._monitor_events()
        for _ in range(DRAIN_MAX):
            try:
                parts = self._socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            frames = [p.buffer if len(p) > ZERO_COPY_BYTES else p.bytes for p in parts]  # weights: joined once, at the end
            try:
                message = wire.parse(frames, "robot", self.config.limits)
            except wire.ProtocolError as exc:
                self._refusals.refuse(exc.reason, f"message from the trainer: {exc}")
                continue
            self._handle(message)

    def _handle(self, message: wire.Message) -> None:
        header, now = message.header, time.monotonic()
        if message.kind == wire.WELCOME:
            self._welcome(header, now)
            return
        if header["session"] != self._session:
            if self._session is not None:  # the trainer restarted: introduce ourselves again
                self._lose(f"the trainer started a new session {header['session']}")
                self._last_hello = 0.0
            return
        self._last_heard = now
        if message.kind == wire.ACK:
            for seq in header["acked"] + header["rejected"]:
                self._in_flight.pop(seq, None)
            self.counters.inc("acked", self._spool.ack(header["acked"]))
            self.counters.inc("rejected_by_trainer", self._spool.ack(header["rejected"]))
            self.counters.set("backlog", len(self._spool))
        elif message.kind == wire.WEIGHTS:
            self._take_weights(message)

    def _welcome(self, header: dict[str, Any], now: float) -> None:
        if not header["accepted"]:  # wrong specs, or a trainer that does not know this connection
            self._refusals.refuse("not_welcome", f"the trainer at {self.config.endpoint} did not welcome this robot: {header['reason']}")
            self._lose(f"the trainer did not welcome this robot: {header['reason']}")
            return
        if header["session"] == self._session:  # an answer to an earlier HELLO of this connection
            self._last_heard = now
            return
        self._session, self._last_heard = header["session"], now
        self._problem = ""
        log.info("trainer link: connected to %s (session %s); %d transitions to send", self.config.endpoint, self._session, len(self._spool))
        self._requeue()

    def _take_weights(self, message: wire.Message) -> None:
        """One chunk of weights; the version it completes becomes the newest if it checks out."""
        version = message.header["version"]
        if version <= self._held_version:  # the trainer sent it before it knew what this robot has
            if message.header["offset"] == 0:
                self.counters.inc("weights_conflated")
            return
        if message.header["offset"] == 0 and self._weights_in.receiving is not None:
            self.counters.inc("weights_conflated")  # a newer version replaces one still arriving
        try:
            weights = self._weights_in.add(message)
            if weights is None:
                return
            if (weights.observation_spec, weights.action_spec) != (self.config.observation_spec, self.config.action_spec):
                raise wire.ProtocolError("spec_mismatch", f"weights v{version} are for {weights.observation_spec}, {weights.action_spec}, not this robot's specs")
        except wire.ProtocolError as exc:
            self._refusals.refuse(exc.reason, f"weights refused: {exc}")
            self._weights_seen = max(self._weights_seen, version)  # done with it: the trainer may send a newer one
            self._send_heartbeat(time.monotonic())
            return
        with self._weights_lock:
            self._weights = weights
        self._held_version, self._weights_seen = version, max(self._weights_seen, version)
        self.counters.inc("weights_received")
        self._send_heartbeat(time.monotonic())  # tells the trainer which version arrived

    def _requeue(self) -> None:
        resent = len(self._in_flight)
        self._in_flight.clear()
        self._to_send = collections.deque(self._spool.unacked())
        self.counters.inc("resent", resent)

    def _lose(self, why: str) -> None:
        self._weights_in = wire.WeightsReceiver(self.config.limits)  # chunks of a lost session never continue
        if self._session is not None:
            self.counters.inc("disconnects")
            log.warning("trainer link: lost the trainer at %s: %s; reconnecting", self.config.endpoint, why)
        self._session, self._problem = None, why

    def _monitor_events(self) -> None:
        failed = len(failed_handshakes(self._monitor))
        if failed:
            self.counters.inc("handshake_failures", failed)
            self._problem = (
                f"CURVE handshake failed {self.counters['handshake_failures']} times: is trainer_key the trainer's "
                "public key, and this robot's public key in the trainer's allow-list?"
            )

    def _send(self, frames: list[bytes]) -> bool:
        try:
            self._socket.send_multipart(frames, zmq.NOBLOCK)
            return True
        except zmq.Again:  # no connection yet, or the trainer is not reading: retried later
            return False

    def _open_socket(self) -> None:
        self._close_socket()
        cfg = self.config
        sock = self._context.socket(zmq.DEALER)
        sock.linger = 0
        sock.setsockopt(zmq.IMMEDIATE, 1)  # queue nothing on a connection that is not up
        sock.setsockopt(zmq.MAXMSGSIZE, cfg.limits.max_frame_bytes())
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        sock.setsockopt(zmq.HANDSHAKE_IVL, int(cfg.peer_timeout_s * 1000))
        if self._curve is not None:
            sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = self._curve
        self._monitor = sock.get_monitor_socket(HANDSHAKE_FAILED)
        self._socket = sock  # from here on _close_socket releases it, should connect fail
        sock.connect(cfg.endpoint)
        self._poller = zmq.Poller()
        self._poller.register(sock, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        self._socket_opened = time.monotonic()
        self._last_hello = 0.0

    def _close_socket(self) -> None:
        if self._socket is not None:
            self._socket.disable_monitor()
            self._monitor.close(linger=0)
            self._socket.close(linger=0)
            self._socket = self._monitor = None


def _client_keys(config: LinkConfig) -> tuple[bytes, bytes, bytes] | None:
    """(own public, own secret, trainer public) for CURVE, or None when explicitly insecure."""
    if config.insecure:
        log.warning(
            "trainer link to %s runs WITHOUT authentication or encryption (insecure): anyone on the network "
            "can read the stream and impersonate the trainer", config.endpoint
        )
        return None
    if not (config.secret_key and config.trainer_key):
        raise LinkConfigError("the trainer link needs secret_key (this robot's NAME.key_secret) and trainer_key (the trainer's NAME.key); set insecure to run without")
    try:
        public, secret = load_keypair(config.secret_key)
        return public, secret, load_public(config.trainer_key)
    except KeyFileError as exc:
        raise LinkConfigError(str(exc)) from None
