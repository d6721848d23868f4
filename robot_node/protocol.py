"""The wire protocol between robot and trainer: envelopes, message kinds, encoding and parsing.

Every message is a ZeroMQ multipart message: frame 0 is a msgpack header (a map with the
schema version `v`, the `kind` and the kind's fields), the other frames are binary payload
that the header describes (codec, shapes, dtypes, sizes). msgpack and raw bytes only: nothing
received is ever unpickled. The parsers below are the only code that touches received bytes;
they check every field's type, range and size and raise ProtocolError (with a short `reason`
used for counting) for anything else, never another exception. docs/ARCHITECTURE.md, "Robot ↔
trainer link", lists the kinds and fields.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import cv2
import msgpack
import numpy as np

from robot_node import png
from robot_node.link_interface import PolicyWeights, Transition
from robot_node.spec import ActionSpec, ObservationSpec, SpecError

SCHEMA_VERSION = 1

# Robot -> trainer.
HELLO = "hello"  # who I am, my specs, the weights version I run; answered by WELCOME
TRANSITIONS = "transitions"  # a batch of transitions; answered by ACK
HEARTBEAT = "heartbeat"  # both ways; the robot's also confirms the weights it has seen
# Trainer -> robot.
WELCOME = "welcome"  # accepts (or refuses) a HELLO; starts a session
ACK = "ack"  # sequence numbers stored (or duplicates) and refused for good
WEIGHTS = "weights"  # ONNX bytes with version, train step, sha256 and specs

CODECS = ("png", "jpeg", "raw")
# Weights travel as a series of WEIGHTS messages of one chunk each: CURVE encrypts frame by
# frame, so the trainer encrypts, the wire carries, and the robot decrypts and hashes different
# chunks at once (the sha256 is known when the last chunk is in), and the robot's MAXMSGSIZE
# stays small.
WEIGHTS_CHUNK_BYTES = 1 << 20
_INT64_MAX = 2**63 - 1


class ProtocolError(ValueError):
    """A message or one of its items is refused; `reason` names the kind of fault for counting."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Limits:
    """Upper bounds enforced by the parsers, on top of the sockets' MAXMSGSIZE."""

    max_header_bytes: int = 1 << 20
    max_batch: int = 256  # transitions per message
    max_id_chars: int = 128  # robot ids, episode ids, session ids
    max_spec_chars: int = 1 << 14  # JSON of one spec
    max_weights_bytes: int = 256 << 20  # one ONNX model

    def max_frame_bytes(self, observation_spec: ObservationSpec | None = None) -> int:
        """MAXMSGSIZE: on the trainer a header or one image (PNG/JPEG of noise can exceed raw),
        on the robot (no spec) a header or one chunk of weights; plus CURVE's per-frame overhead,
        since libzmq checks the size of the encrypted frame."""
        if observation_spec is None:
            return max(self.max_header_bytes, WEIGHTS_CHUNK_BYTES) + 4096
        h, w, c = observation_spec.image_shape
        return max(self.max_header_bytes, 2 * h * w * c) + 4096


DEFAULT_LIMITS = Limits()


class Message(NamedTuple):
    kind: str
    header: dict[str, Any]
    frames: list[bytes]  # payload frames after the header


@dataclass(frozen=True)
class Codec:
    """How images travel: PNG (lossless, default), JPEG (quality 1-100) or raw bytes."""

    name: str = "png"
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        if self.name not in CODECS:
            raise ValueError(f"unknown image codec {self.name!r}; choose one of {', '.join(CODECS)}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be 1-100, got {self.jpeg_quality}")

    def encode(self, rgb: np.ndarray) -> bytes:
        if self.name == "raw":
            return np.ascontiguousarray(rgb).tobytes()
        if self.name == "png":
            return png.encode_rgb(rgb)
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])  # OpenCV's files hold BGR
        if not ok:
            raise ProtocolError("encode", f"OpenCV could not encode a {rgb.shape} image as {self.name}")
        return data.tobytes()


@dataclass
class EncodedTransition:
    """A transition as it travels and as the spool keeps it: a header item and its image frames."""

    item: dict[str, Any]  # everything but the images; `seq` is added when it is sent
    frames: list[bytes]  # the image, then the next image if this is the episode's last step


@dataclass
class DecodedItem:
    """One item of a received TRANSITIONS message: its raw form (for the write-ahead log) and
    the decoded transition, or why it was refused."""

    seq: int
    item: dict[str, Any]
    frames: list[bytes]
    transition: Transition | None = None
    error: ProtocolError | None = None


@dataclass
class Specs:
    observation: ObservationSpec
    action: ActionSpec
    limits: Limits = field(default_factory=Limits)


# --------------------------------------------------------------------------- encoding


def pack(kind: str, fields: dict[str, Any], frames: list[bytes] = ()) -> list[bytes]:
    header = {"v": SCHEMA_VERSION, "kind": kind, **fields}
    return [msgpack.packb(header, use_bin_type=True), *frames]


def encode_transition(t: Transition, specs: Specs, codec: Codec) -> EncodedTransition:
    """Check a transition against the robot's specs and encode it; ProtocolError if it is bad."""
    try:
        return _encode_transition(t, specs, codec)
    except ProtocolError:
        raise
    except (TypeError, ValueError, AttributeError, OverflowError) as exc:  # not even the right types or sizes
        raise ProtocolError("invalid", f"transition is malformed: {type(exc).__name__}: {exc}") from None


def _encode_transition(t: Transition, specs: Specs, codec: Codec) -> EncodedTransition:
    check_transition(t, specs)
    frames = [codec.encode(t.image)]
    item: dict[str, Any] = {
        "episode": str(t.episode_id),
        "step": int(t.step),
        "reward": float(t.reward),
        "terminal": bool(t.terminal),
        "truncated": bool(t.truncated),
        "policy_version": int(t.policy_version),
        "stamp": float(t.stamp),
        "state": np.asarray(t.state, np.float32).tobytes(),
        "action": np.asarray(t.action, np.float32).tobytes(),
        "image": len(frames[0]),
        "next": None,
    }
    if t.is_last:
        frames.append(codec.encode(t.next_image))
        item["next"] = {"state": np.asarray(t.next_state, np.float32).tobytes(), "image": len(frames[1])}
    return EncodedTransition(item, frames)


def pack_transitions(robot_id: str, codec: str, specs: Specs, batch: list[tuple[int, EncodedTransition]]) -> list[bytes]:
    fields = {
        "robot": robot_id,
        "codec": codec,
        "image": {"shape": list(specs.observation.image_shape), "dtype": "uint8"},
        "state": {"shape": [specs.observation.state_dim], "dtype": "float32"},
        "action": {"shape": [specs.action.dim], "dtype": "float32"},
        "items": [{**encoded.item, "seq": seq} for seq, encoded in batch],
    }
    return pack(TRANSITIONS, fields, [f for _, encoded in batch for f in encoded.frames])


def pack_weights(weights: PolicyWeights, session: str) -> list[list[bytes]]:
    """The WEIGHTS messages that carry `weights`: each holds the whole envelope, the offset of its
    chunk and the chunk (a view of the bytes, not a copy); sent in order (see WeightsReceiver)."""
    fields = {
        "session": session,
        "version": weights.version,
        "train_step": weights.train_step,
        "sha256": weights.sha256,
        "observation_spec": weights.observation_spec.to_json(),
        "action_spec": weights.action_spec.to_json(),
        "nbytes": len(weights.onnx),
    }
    view = memoryview(weights.onnx)
    return [pack(WEIGHTS, {**fields, "offset": offset}, [view[offset : offset + WEIGHTS_CHUNK_BYTES]]) for offset in range(0, len(view), WEIGHTS_CHUNK_BYTES)]


# --------------------------------------------------------------------------- parsing


def _int(lo: int = 0, hi: int = _INT64_MAX):
    def check(value: Any) -> bool:
        return type(value) is int and lo <= value <= hi

    return check


_is_step, _is_version = _int(), _int(-1)  # a transition's step; a policy version (-1: none yet)


def _str(max_chars: int):
    def check(value: Any) -> bool:
        return type(value) is str and 0 < len(value) <= max_chars and value.isprintable()

    return check


def _is_bool(value: Any) -> bool:
    return type(value) is bool


def _is_number(value: Any) -> bool:
    return type(value) in (float, int)


def _is_bytes(value: Any) -> bool:
    return type(value) is bytes


def _seq_list(limits: Limits):
    def check(value: Any) -> bool:
        return type(value) is list and len(value) <= limits.max_batch and all(type(s) is int and 0 <= s <= _INT64_MAX for s in value)

    return check


class _Schemas(NamedTuple):
    kinds: dict[str, dict[str, dict[str, Any]]]  # receiver -> kind -> field -> check
    item: dict[str, Any]  # field -> check, for each transition of a TRANSITIONS message


def _build_schemas(limits: Limits) -> _Schemas:
    """Field checks per kind, for messages the trainer receives and messages the robot receives,
    and for each item of a TRANSITIONS message."""
    ident, spec = _str(limits.max_id_chars), _str(limits.max_spec_chars)
    version, size = _is_version, _int(1)
    item = {
        "episode": ident,
        "step": _is_step,
        "reward": _is_number,
        "terminal": _is_bool,
        "truncated": _is_bool,
        "policy_version": version,
        "stamp": _is_number,
        "state": _is_bytes,
        "action": _is_bytes,
        "image": size,
        "next": lambda v: v is None or (type(v) is dict and _is_bytes(v.get("state")) and size(v.get("image"))),
    }
    to_trainer = {
        HELLO: {"robot": ident, "observation_spec": spec, "action_spec": spec, "weights_version": version},
        HEARTBEAT: {"robot": ident, "weights_version": version, "weights_seen": version, "backlog": _int()},
        TRANSITIONS: {
            "robot": ident,
            "codec": lambda v: v in CODECS,
            "image": lambda v: type(v) is dict,
            "state": lambda v: type(v) is dict,
            "action": lambda v: type(v) is dict,
            "items": lambda v: type(v) is list and 0 < len(v) <= limits.max_batch,
        },
    }
    to_robot = {
        WELCOME: {"session": ident, "accepted": _is_bool, "reason": lambda v: type(v) is str, "weights_version": version},
        HEARTBEAT: {"session": ident, "weights_version": version},
        ACK: {"session": ident, "acked": _seq_list(limits), "rejected": _seq_list(limits)},
        WEIGHTS: {
            "session": ident,
            "version": _int(),
            "train_step": _int(),
            "sha256": lambda v: type(v) is str and len(v) == 64 and all(c in "0123456789abcdef" for c in v),
            "observation_spec": spec,
            "action_spec": spec,
            "nbytes": _int(1, limits.max_weights_bytes),
            "offset": _int(0, limits.max_weights_bytes),
        },
    }
    return _Schemas({"trainer": to_trainer, "robot": to_robot}, item)


_SCHEMA_CACHE: dict[Limits, _Schemas] = {}


def _schemas(limits: Limits) -> _Schemas:
    return _SCHEMA_CACHE.get(limits) or _SCHEMA_CACHE.setdefault(limits, _build_schemas(limits))


def parse(frames: list[bytes], receiver: str, limits: Limits = DEFAULT_LIMITS) -> Message:
    """Check a message's envelope and its kind's fields. `receiver` is "trainer" or "robot"."""
    if not frames:
        raise ProtocolError("empty", "empty message")
    raw = frames[0]
    if len(raw) > limits.max_header_bytes:
        raise ProtocolError("header_size", f"header of {len(raw)} bytes exceeds {limits.max_header_bytes}")
    try:
        header = msgpack.unpackb(raw, raw=False, strict_map_key=True, max_ext_len=0)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:  # truncated, extra data, bad UTF-8, ...
        raise ProtocolError("bad_header", f"header is not valid msgpack ({type(exc).__name__}: {exc})") from None
    if type(header) is not dict:
        raise ProtocolError("bad_header", f"header is a {type(header).__name__}, not a map")
    if header.get("v") != SCHEMA_VERSION:
        raise ProtocolError("schema_version", f"schema version {header.get('v')!r}, this side speaks {SCHEMA_VERSION}")
    kind = header.get("kind")
    schema = _schemas(limits).kinds[receiver].get(kind) if type(kind) is str else None
    if schema is None:
        raise ProtocolError("unknown_kind", f"unknown message kind {kind!r} for the {receiver}")
    for name, check in schema.items():
        if name not in header or not check(header[name]):
            raise ProtocolError("bad_field", f"{kind}: field {name!r} is missing or invalid ({_short(header.get(name))})")
    return Message(kind, header, list(frames[1:]))


def decode_transitions(message: Message, specs: Specs) -> list[DecodedItem]:
    """Split a TRANSITIONS message into items and decode each; a bad item does not spoil the
    others. A message whose layout is wrong (frames that do not add up, a spec other than the
    trainer's) raises ProtocolError as a whole."""
    header = message.header
    announced = (header["image"].get("shape"), header["state"].get("shape"), header["action"].get("shape"))
    expected = (list(specs.observation.image_shape), [specs.observation.state_dim], [specs.action.dim])
    dtypes = (header["image"].get("dtype"), header["state"].get("dtype"), header["action"].get("dtype"))
    if announced != expected or dtypes != ("uint8", "float32", "float32"):
        raise ProtocolError("spec_mismatch", f"payload announces image/state/action {announced} {dtypes}, the trainer expects {expected}")
    items: list[DecodedItem] = []
    frame_index = 0
    for item in header["items"]:
        if type(item) is not dict or not _int()(item.get("seq")):
            raise ProtocolError("bad_item", f"transition item without a valid seq: {_short(item)}")
        count = 2 if type(item.get("next")) is dict else 1
        frames = message.frames[frame_index : frame_index + count]
        frame_index += count
        items.append(DecodedItem(item["seq"], item, frames))
    if frame_index != len(message.frames):
        raise ProtocolError("frame_count", f"{len(header['items'])} items need {frame_index} image frames, got {len(message.frames)}")
    for decoded in items:
        try:
            decoded.transition = decode_item(decoded.item, decoded.frames, header["codec"], specs)
        except ProtocolError as exc:
            decoded.error = exc
    return items


def decode_item(item: dict[str, Any], frames: list[bytes], codec: str, specs: Specs) -> Transition:
    """One transition from its header item and image frames, checked against the specs."""
    for name, check in _schemas(specs.limits).item.items():
        if name not in item or not check(item[name]):
            raise ProtocolError("bad_item", f"field {name!r} is missing or invalid ({_short(item.get(name))})")
    nxt = item["next"]
    sizes = [item["image"]] + ([nxt["image"]] if nxt is not None else [])
    if sizes != [len(f) for f in frames]:
        raise ProtocolError("frame_size", f"image frames have {[len(f) for f in frames]} bytes, the header says {sizes}")
    shape = specs.observation.image_shape
    transition = Transition(
        episode_id=item["episode"],
        step=item["step"],
        image=decode_image(codec, frames[0], shape),
        state=_float32s(item["state"], "state"),
        action=_float32s(item["action"], "action"),
        reward=float(item["reward"]),
        terminal=item["terminal"],
        truncated=item["truncated"],
        policy_version=item["policy_version"],
        stamp=float(item["stamp"]),
    )
    if nxt is not None:
        transition.next_state = _float32s(nxt["state"], "next state")
        transition.next_image = decode_image(codec, frames[1], shape)
    check_transition(transition, specs)
    return transition


def check_transition(t: Transition, specs: Specs) -> None:
    """What both ends require of a transition: shapes per the specs, finite numbers, actions in
    bounds, and a next observation exactly on the episode's last step."""
    obs, act = specs.observation, specs.action
    if not (_is_step(int(t.step)) and _is_version(int(t.policy_version))):  # what the receiving end's schema allows
        raise ProtocolError("bad_item", f"{_name(t)}: step {t.step} or policy version {t.policy_version} is outside int64")
    is_last = t.terminal or t.truncated
    if is_last != (t.next_image is not None):
        raise ProtocolError("next_observation", f"{_name(t)}: the next observation comes with the last step of an episode, and only then")
    arrays = [("image", t.image, obs.image_shape), ("state", t.state, (obs.state_dim,)), ("action", t.action, (act.dim,))]
    if is_last:
        arrays += [("next_image", t.next_image, obs.image_shape), ("next_state", t.next_state, (obs.state_dim,))]
    for field_name, value, shape in arrays:
        if not isinstance(value, np.ndarray) or value.shape != shape or (field_name.endswith("image") and value.dtype != np.uint8):
            got = f"{value.dtype}{list(value.shape)}" if isinstance(value, np.ndarray) else type(value).__name__
            raise ProtocolError("shape", f"{_name(t)}: {field_name} is {got}, expected {list(shape)}")
    # A dozen values: as Python floats these checks cost a fraction of numpy's reductions.
    action = t.action.tolist()
    numbers = [t.reward, t.stamp, *t.state.tolist(), *action, *(t.next_state.tolist() if is_last else ())]
    if not all(map(math.isfinite, numbers)):
        raise ProtocolError("not_finite", f"{_name(t)}: reward, stamp, state or action is NaN or infinite")
    if min(action) < act.low - 1e-6 or max(action) > act.high + 1e-6:
        raise ProtocolError("action_bounds", f"{_name(t)}: action {np.round(t.action, 3).tolist()} outside [{act.low}, {act.high}]")


def _name(t: Transition) -> str:
    return f"transition {t.episode_id!r}/{t.step}"


@dataclass
class _PartialWeights:
    envelope: dict[str, Any]  # the WEIGHTS header without its offset: the same on every chunk
    chunks: list[bytes]
    received: int
    digest: Any  # hashlib's sha256 of the chunks so far


class WeightsReceiver:
    """Puts the WEIGHTS chunks of one version back together on the robot, hashing each chunk as it
    arrives, so the sha256 of the whole is known as soon as its last chunk is in. A chunk that
    does not continue the weights being received (a gap, another envelope) drops them; the first
    chunk of a version starts over."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self._partial: _PartialWeights | None = None

    @property
    def receiving(self) -> int | None:
        """The version whose chunks are arriving, if any."""
        return self._partial.envelope["version"] if self._partial is not None else None

    def add(self, message: Message) -> PolicyWeights | None:
        """The weights that `message` completes, or None while chunks are missing; ProtocolError
        if it is refused (then nothing of that version is kept)."""
        header, frames = message.header, message.frames
        envelope = {name: value for name, value in header.items() if name != "offset"}
        if header["offset"] == 0:
            self._partial = _PartialWeights(envelope, [], 0, hashlib.sha256())
        partial, self._partial = self._partial, None  # kept only if this chunk is good
        version, nbytes = header["version"], header["nbytes"]
        if partial is None or envelope != partial.envelope or header["offset"] != partial.received:
            raise ProtocolError("weights_chunk", f"weights v{version}: the chunk at byte {header['offset']} does not continue the weights being received")
        size = len(frames[0]) if len(frames) == 1 else 0
        end = partial.received + size
        if not 0 < size <= WEIGHTS_CHUNK_BYTES or end > nbytes or (size < WEIGHTS_CHUNK_BYTES and end != nbytes):
            raise ProtocolError("frame_size", f"weights v{version}: {len(frames)} frames of {[len(f) for f in frames]} bytes at byte {partial.received} of {nbytes}, in chunks of {WEIGHTS_CHUNK_BYTES}")
        partial.chunks.append(frames[0])
        partial.digest.update(frames[0])
        partial.received = end
        if end < nbytes:
            self._partial = partial
            return None
        return _verified_weights(partial.envelope, b"".join(partial.chunks), partial.digest.hexdigest())


def _verified_weights(envelope: dict[str, Any], onnx: bytes, digest: str) -> PolicyWeights:
    version = envelope["version"]
    try:
        observation_spec = ObservationSpec.from_json(envelope["observation_spec"])
        action_spec = ActionSpec.from_json(envelope["action_spec"])
    except SpecError as exc:
        raise ProtocolError("bad_spec", f"weights v{version}: {exc}") from None
    if digest != envelope["sha256"]:
        raise ProtocolError("sha256_mismatch", f"weights v{version}: sha256 {digest[:12]}… does not match the envelope's {envelope['sha256'][:12]}…")
    weights = PolicyWeights(version, envelope["train_step"], onnx, envelope["sha256"], observation_spec, action_spec)
    vars(weights)["onnx_sha256"] = digest  # the hash of exactly these bytes, where the cached property keeps it: not computed again
    return weights


def parse_specs(header: dict[str, Any]) -> tuple[ObservationSpec, ActionSpec]:
    """The specs a HELLO announces."""
    try:
        return ObservationSpec.from_json(header["observation_spec"]), ActionSpec.from_json(header["action_spec"])
    except (SpecError, TypeError, ValueError) as exc:
        raise ProtocolError("bad_spec", f"hello: {exc}") from None


def decode_image(codec: str, data: bytes, shape: tuple[int, int, int]) -> np.ndarray:
    """Decode an RGB image, checking the announced size before decoding (no decompression bombs)."""
    h, w, c = shape
    if codec == "raw":
        if len(data) != h * w * c:
            raise ProtocolError("bad_image", f"raw image of {len(data)} bytes, expected {h * w * c} for {shape}")
        return np.frombuffer(data, np.uint8).reshape(shape)
    if codec == "png":
        try:
            return png.decode_rgb(data, shape)
        except png.PngError as exc:
            raise ProtocolError(exc.reason, str(exc)) from None
    size = _jpeg_size(data)
    if size != (h, w):
        raise ProtocolError("image_size", f"jpeg image is {size}, the spec says {(h, w)}")
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None or bgr.shape != shape:
        raise ProtocolError("bad_image", f"jpeg image does not decode to {shape}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic); not DHT/JPG/DAC.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(data: bytes) -> tuple[int, int]:
    if data[:2] != b"\xff\xd8":
        raise ProtocolError("bad_image", "not a JPEG image")
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            break
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _JPEG_SOF and i + 9 <= len(data):
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return height, width
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if length < 2:
            break
        i += 2 + length
    raise ProtocolError("bad_image", "JPEG image without a readable frame header")


def _float32s(data: bytes, name: str) -> np.ndarray:
    if len(data) % 4:
        raise ProtocolError("shape", f"{name} has {len(data)} bytes, not a whole number of float32 values")
    return np.frombuffer(data, "<f4")


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"
