"""Fuzzing both parsers: random and mutated messages never crash them; only ProtocolError escapes.

Each hypothesis example throws a batch of messages, so every test below feeds its parser
10^4 messages while hypothesis' per-example overhead stays small.
"""

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robot_node import protocol as wire
from robot_node.link_interface import PolicyWeights
from link_helpers import ACT, OBS, SPECS, transition

EXAMPLES, PER_EXAMPLE = 1000, 10  # 10^4 messages per test
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
fed = {"trainer": 0, "robot": 0}


def trainer_parses(frames):
    fed["trainer"] += 1
    try:
        message = wire.parse(frames, "trainer")
        if message.kind == wire.TRANSITIONS:
            items = wire.decode_transitions(message, SPECS)
            assert all((d.transition is None) != (d.error is None) for d in items)
        elif message.kind == wire.HELLO:
            wire.parse_specs(message.header)
    except wire.ProtocolError as exc:
        assert exc.reason and str(exc)


def robot_parses(frames):
    fed["robot"] += 1
    try:
        message = wire.parse(frames, "robot")
        if message.kind == wire.WEIGHTS:
            wire.decode_weights(message)
    except wire.ProtocolError as exc:
        assert exc.reason and str(exc)


def batch(count, codec):
    return wire.pack_transitions(
        "robot1", codec.name, SPECS, [(i, wire.encode_transition(transition(0, 8 + i), SPECS, codec)) for i in range(count)]
    )


WEIGHTS = PolicyWeights.from_onnx(b"\x08\x07" + bytes(range(200)), version=3, train_step=9, observation_spec=OBS, action_spec=ACT)
TO_TRAINER = [
    batch(1, wire.Codec("png")),
    batch(2, wire.Codec("png")),  # the second item ends the episode: two image frames
    batch(2, wire.Codec("raw")),
    batch(1, wire.Codec("jpeg")),
    wire.pack(wire.HELLO, {"robot": "r1", "observation_spec": OBS.to_json(), "action_spec": ACT.to_json(), "weights_version": 2}),
    wire.pack(wire.HEARTBEAT, {"robot": "r1", "weights_version": 2, "weights_seen": 3, "backlog": 10}),
]
TO_ROBOT = [
    wire.pack_weights(WEIGHTS, "s1"),
    wire.pack(wire.WELCOME, {"session": "s1", "accepted": True, "reason": "", "weights_version": 3}),
    wire.pack(wire.ACK, {"session": "s1", "acked": [1, 2, 3], "rejected": [4]}),
    wire.pack(wire.HEARTBEAT, {"session": "s1", "weights_version": 3}),
]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1), st.floats(), st.text(max_size=12), st.binary(max_size=24)
)
values = scalars | st.lists(scalars, max_size=3) | st.dictionaries(st.sampled_from(["shape", "dtype", "state", "image", "seq"]), scalars, max_size=3)
field_names = st.sampled_from(
    ["v", "kind", "robot", "session", "codec", "items", "image", "state", "action", "seq", "episode", "step", "reward", "next",
     "terminal", "truncated", "stamp", "acked", "rejected", "version", "sha256", "nbytes", "observation_spec", "weights_version"]
)
kinds = st.sampled_from([wire.HELLO, wire.TRANSITIONS, wire.HEARTBEAT, wire.WELCOME, wire.ACK, wire.WEIGHTS, "other"])


@st.composite
def random_message(draw):
    """Garbage bytes, or a msgpack header of the right shape with random fields, plus random frames."""
    if draw(st.booleans()):
        header = draw(st.binary(max_size=200))
    else:
        fields = draw(st.dictionaries(field_names, values, max_size=6))
        fields.update(v=draw(st.sampled_from([1, 1, 1, 0, 2, "1"])), kind=draw(kinds))
        header = msgpack.packb(fields)
    return [header, *draw(st.lists(st.binary(max_size=100), max_size=3))]


def mutate_header(draw, header_bytes):
    header = msgpack.unpackb(header_bytes)
    target = header
    if "items" in header and draw(st.booleans()):
        target = header["items"][draw(st.integers(0, len(header["items"]) - 1))]
    key = draw(st.sampled_from(sorted(target)))
    action = draw(st.sampled_from(["replace", "delete", "nest"]))
    if action == "replace":
        target[key] = draw(values)
    elif action == "delete":
        del target[key]
    else:
        target[key] = [target[key]]
    return msgpack.packb(header)


def mutate_bytes(draw, data):
    if not data:
        return draw(st.binary(max_size=20))
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@st.composite
def mutated_message(draw, templates):
    frames = list(draw(st.sampled_from(templates)))
    for _ in range(draw(st.integers(1, 3))):
        what = draw(st.sampled_from(["header", "bytes", "drop", "duplicate", "swap"]))
        index = draw(st.integers(0, len(frames) - 1)) if frames else 0
        if what == "header" and frames:
            try:
                frames[0] = mutate_header(draw, frames[0])
            except (ValueError, TypeError, KeyError, msgpack.UnpackException):  # an earlier mutation broke it
                frames[0] = mutate_bytes(draw, frames[0])
        elif what == "bytes" and frames:
            frames[index] = mutate_bytes(draw, frames[index])
        elif what == "drop" and frames:
            del frames[index]
        elif what == "duplicate" and frames:
            frames.insert(index, frames[index])
        elif what == "swap" and len(frames) > 1:
            frames[0], frames[-1] = frames[-1], frames[0]
    return frames


def fuzz(parser, strategy):
    """A hypothesis run feeding EXAMPLES batches of PER_EXAMPLE messages to `parser`."""

    @FUZZ
    @given(st.lists(strategy, min_size=PER_EXAMPLE, max_size=PER_EXAMPLE))
    def run(messages):
        for frames in messages:
            parser(frames)

    return run


def fuzz_and_count(side, parser, strategy):
    before = fed[side]
    fuzz(parser, strategy)()
    assert fed[side] - before >= 10**4


def test_trainer_parser_survives_random_messages():
    fuzz_and_count("trainer", trainer_parses, random_message())


def test_trainer_parser_survives_mutated_messages():
    fuzz_and_count("trainer", trainer_parses, mutated_message(TO_TRAINER))


def test_robot_parser_survives_random_messages():
    fuzz_and_count("robot", robot_parses, random_message())


def test_robot_parser_survives_mutated_messages():
    fuzz_and_count("robot", robot_parses, mutated_message(TO_ROBOT))


def test_the_templates_themselves_parse():
    for frames in TO_TRAINER:
        message = wire.parse(frames, "trainer")
        if message.kind == wire.TRANSITIONS:
            assert all(d.error is None for d in wire.decode_transitions(message, SPECS))
    for frames in TO_ROBOT:
        message = wire.parse(frames, "robot")
        if message.kind == wire.WEIGHTS:
            assert wire.decode_weights(message).onnx == WEIGHTS.onnx
