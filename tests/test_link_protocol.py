"""The wire protocol, the spool, the record log and the key files, each on its own."""

import dataclasses
import hashlib
import os
import subprocess
import sys

import cv2
import msgpack
import numpy as np
import pytest
import zmq.auth

from robot_node import protocol as wire
from robot_node.keys import KeyFileError, generate, load_keypair, load_public
from robot_node.link import LinkConfigError, ZmqTrainerLink
from robot_node.link_interface import PolicyWeights
from robot_node.record_log import RecordFormatError, SegmentLog, blob_record, read_blob_record
from robot_node.spool import Spool
from link_helpers import ACT, OBS, SPECS, message_of, robot_config, transition

def decode(frames):
    return wire.decode_transitions(wire.parse(frames, "trainer"), SPECS)


@pytest.mark.parametrize("codec", [wire.Codec("png"), wire.Codec("raw"), wire.Codec("jpeg", jpeg_quality=95)])
def test_transitions_round_trip_through_each_codec(codec):
    sent = [transition(0, 8), transition(0, 9)]  # the second ends the episode: it carries the next frame
    items = decode(message_of(sent, codec, first_seq=40))

    assert [d.seq for d in items] == [40, 41] and all(d.error is None for d in items)
    for original, d in zip(sent, items):
        got = d.transition
        assert (got.episode_id, got.step, got.reward, got.terminal, got.truncated) == (
            original.episode_id, original.step, original.reward, original.terminal, original.truncated)
        np.testing.assert_array_equal(got.action, original.action)
        np.testing.assert_array_equal(got.state, original.state)
        if codec.name == "jpeg":  # lossy, but close
            assert np.abs(got.image.astype(int) - original.image).mean() < 8
        else:
            np.testing.assert_array_equal(got.image, original.image)
    assert items[0].transition.next_image is None
    assert items[1].transition.next_image.shape == OBS.image_shape


def test_png_on_the_wire_is_a_real_png_in_rgb_order():
    frames = message_of([transition(1, 0)])
    on_disk = cv2.imdecode(np.frombuffer(frames[1], np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(cv2.cvtColor(on_disk, cv2.COLOR_BGR2RGB), transition(1, 0).image)


def header_of(frames):
    return msgpack.unpackb(frames[0])


def with_header(frames, **changes):
    return [msgpack.packb({**header_of(frames), **changes}), *frames[1:]]


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda f: [], "empty"),
        (lambda f: [b"\xc1garbage", *f[1:]], "bad_header"),
        (lambda f: [msgpack.packb([1, 2]), *f[1:]], "bad_header"),
        (lambda f: with_header(f, v=2), "schema_version"),
        (lambda f: with_header(f, kind="teleport"), "unknown_kind"),
        (lambda f: with_header(f, kind="weights"), "unknown_kind"),  # a trainer-only kind
        (lambda f: with_header(f, robot=""), "bad_field"),
        (lambda f: with_header(f, codec="gif"), "bad_field"),
        (lambda f: with_header(f, items=[]), "bad_field"),
        (lambda f: [msgpack.packb({"v": 1, "kind": "hello", "robot": "x" * 10_000}), *f[1:]], "bad_field"),
        (lambda f: [b"\x00" * (wire.DEFAULT_LIMITS.max_header_bytes + 1)], "header_size"),
    ],
)
def test_malformed_envelopes_are_refused_with_a_reason(mutate, reason):
    with pytest.raises(wire.ProtocolError) as info:
        decode(mutate(message_of([transition(0, 0)])))
    assert info.value.reason == reason


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda f: f[:-1], "frame_count"),  # a frame missing
        (lambda f: [*f, b"extra"], "frame_count"),
        (lambda f: with_header(f, image={"shape": [64, 64, 3], "dtype": "uint8"}), "spec_mismatch"),
        (lambda f: with_header(f, action={"shape": [4], "dtype": "float64"}), "spec_mismatch"),
    ],
)
def test_messages_whose_layout_is_wrong_are_refused_as_a_whole(mutate, reason):
    with pytest.raises(wire.ProtocolError) as info:
        decode(mutate(message_of([transition(0, 0), transition(0, 1)])))
    assert info.value.reason == reason


def item_change(**changes):
    def mutate(frames):
        header = header_of(frames)
        header["items"][0].update(changes)
        return [msgpack.packb(header), *frames[1:]]

    return mutate


def png_of(shape):
    return cv2.imencode(".png", np.zeros(shape, np.uint8))[1].tobytes()


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (item_change(reward=float("nan")), "not_finite"),
        (item_change(stamp=float("inf")), "not_finite"),
        (item_change(state=np.float32([np.nan, 1]).tobytes()), "not_finite"),
        (item_change(action=np.float32([0, 0, 2.0, 0]).tobytes()), "action_bounds"),
        (item_change(action=np.float32([0, 0, 0]).tobytes()), "shape"),
        (item_change(state=b"\x00\x01\x02"), "shape"),
        (item_change(step=-1), "bad_item"),
        (item_change(episode=""), "bad_item"),
        (item_change(terminal="yes"), "bad_item"),
        (item_change(terminal=True), "next_observation"),  # ends the episode without a next frame
        (item_change(image=5), "frame_size"),
        (lambda f: [f[0], b"\x89PNG not really an image at all....", *f[2:]], "bad_image"),
        (lambda f: [f[0], b"\x00" * len(f[1]), *f[2:]], "bad_image"),
    ],
)
def test_a_bad_item_is_refused_and_the_rest_of_its_batch_survives(mutate, reason):
    frames = mutate(message_of([transition(0, 0), transition(0, 1)]))
    if reason in ("bad_image",):  # keep the announced size consistent with the replaced frame
        header = header_of(frames)
        header["items"][0]["image"] = len(frames[1])
        frames = [msgpack.packb(header), *frames[1:]]
    first, second = decode(frames)
    assert first.transition is None and first.error.reason == reason
    assert second.error is None and second.transition.step == 1


def test_an_image_announcing_another_size_is_refused_before_it_is_decoded():
    # A small PNG that claims 20000 x 20000 pixels: decoding it would allocate 1.2 GB.
    bomb = bytearray(png_of((4, 4, 3)))
    bomb[16:24] = (20000).to_bytes(4, "big") * 2
    for codec, data in (("png", bytes(bomb)), ("jpeg", cv2.imencode(".jpg", np.zeros((48, 32, 3), np.uint8))[1].tobytes())):
        with pytest.raises(wire.ProtocolError) as info:
            wire.decode_image(codec, data, OBS.image_shape)
        assert info.value.reason == "image_size"


def test_the_robot_refuses_to_encode_a_transition_that_breaks_its_specs():
    bad = {
        "shape": dataclasses.replace(transition(0, 0), image=np.zeros((16, 16, 3), np.uint8)),
        "not_finite": dataclasses.replace(transition(0, 0), reward=float("nan")),
        "action_bounds": dataclasses.replace(transition(0, 0), action=np.float32([3, 0, 0, 0])),
        "next_observation": dataclasses.replace(transition(0, 9), next_image=None),
        "invalid": dataclasses.replace(transition(0, 0), step="zero"),
    }
    for reason, t in bad.items():
        with pytest.raises(wire.ProtocolError) as info:
            wire.encode_transition(t, SPECS, wire.Codec())
        assert info.value.reason == reason, reason


def weights_messages(onnx=b"\x08\x07onnx-bytes", **changes):
    weights = PolicyWeights.from_onnx(onnx, version=7, train_step=1000, observation_spec=OBS, action_spec=ACT)
    return [wire.parse(frames, "robot") for frames in wire.pack_weights(dataclasses.replace(weights, **changes), "session1")]


def receive(messages, receiver=None):
    receiver = receiver or wire.WeightsReceiver()
    return [receiver.add(m) for m in messages]


def test_weights_decode_only_when_the_sha256_matches():
    [weights] = receive(weights_messages())
    assert (weights.version, weights.train_step, weights.onnx) == (7, 1000, b"\x08\x07onnx-bytes")
    assert weights.observation_spec == OBS and weights.action_spec == ACT
    with pytest.raises(wire.ProtocolError) as info:
        receive(weights_messages(sha256=hashlib.sha256(b"other").hexdigest()))
    assert info.value.reason == "sha256_mismatch"
    [tampered] = weights_messages()
    with pytest.raises(wire.ProtocolError, match="of 12"):
        receive([tampered._replace(frames=[tampered.frames[0][:-1]])])


def test_large_weights_travel_in_chunks_hashed_as_they_arrive():
    onnx = os.urandom(2 * wire.WEIGHTS_CHUNK_BYTES + 5)
    messages = weights_messages(onnx)
    assert [len(m.frames[0]) for m in messages] == [wire.WEIGHTS_CHUNK_BYTES, wire.WEIGHTS_CHUNK_BYTES, 5]
    assert [m.header["offset"] for m in messages] == [0, wire.WEIGHTS_CHUNK_BYTES, 2 * wire.WEIGHTS_CHUNK_BYTES]
    *pending, weights = receive(messages)
    assert pending == [None, None] and weights.onnx == onnx
    assert vars(weights)["onnx_sha256"] == hashlib.sha256(onnx).hexdigest()  # known on arrival: nobody hashes it again


@pytest.mark.parametrize("sequence, reason", [
    (lambda m: [m[0], m[2]], "weights_chunk"),  # a chunk lost
    (lambda m: [m[1], m[2]], "weights_chunk"),  # the start missed
    (lambda m: [m[0], m[0]._replace(header={**m[1].header, "version": 8}), m[2]], "weights_chunk"),  # another version's chunk
    (lambda m: [m[0], m[1]._replace(frames=[m[1].frames[0][:-1]])], "frame_size"),  # a short chunk before the last
    (lambda m: [m[0], m[1]._replace(frames=[m[1].frames[0], b"x"])], "frame_size"),  # two frames in one chunk
])
def test_chunks_that_do_not_add_up_are_refused_and_the_version_dropped(sequence, reason):
    messages = weights_messages(os.urandom(2 * wire.WEIGHTS_CHUNK_BYTES + 5))
    receiver = wire.WeightsReceiver()
    with pytest.raises(wire.ProtocolError) as info:
        receive(sequence(messages), receiver)
    assert info.value.reason == reason and receiver.receiving is None
    assert receive(messages, receiver)[-1] is not None  # a complete resend gets through


def test_the_first_chunk_of_a_version_starts_over():
    first, second = weights_messages(os.urandom(wire.WEIGHTS_CHUNK_BYTES + 1)), weights_messages(os.urandom(wire.WEIGHTS_CHUNK_BYTES + 1), version=8)
    receiver = wire.WeightsReceiver()
    assert receive([first[0]], receiver) == [None] and receiver.receiving == 7
    assert receive(second, receiver)[-1].version == 8 and receiver.receiving is None


def test_weights_the_link_verified_are_not_hashed_again_by_the_loader(monkeypatch):
    from node_helpers import ACT as POLICY_ACT, OBS as POLICY_OBS, constant_model

    from robot_node.policy import ModelRejected, load_policy

    onnx = constant_model([0.1, 0.2, 0.3, 0.4], version=3)
    offered = PolicyWeights.from_onnx(onnx, version=3, train_step=9, observation_spec=POLICY_OBS, action_spec=POLICY_ACT)
    messages = [wire.parse(frames, "robot") for frames in wire.pack_weights(offered, "s")]
    hashing, real_sha256 = [], hashlib.sha256
    monkeypatch.setattr(hashlib, "sha256", lambda *data: hashing.append(data) or real_sha256(*data))
    runner = load_policy(receive(messages)[-1], POLICY_OBS, POLICY_ACT)
    assert runner.version == 3 and len(hashing) == 1  # the link's hash, chunk by chunk; the loader reused it
    forged = PolicyWeights(3, 9, onnx[:-1] + b"\0", real_sha256(onnx).hexdigest(), POLICY_OBS, POLICY_ACT)
    with pytest.raises(ModelRejected, match="sha256 mismatch"):  # weights from anywhere else are still checked
        load_policy(forged, POLICY_OBS, POLICY_ACT)


def test_the_robot_parses_only_trainer_kinds():
    with pytest.raises(wire.ProtocolError) as info:
        wire.parse(wire.pack(wire.HELLO, {"robot": "r", "observation_spec": "{}", "action_spec": "{}", "weights_version": 0}), "robot")
    assert info.value.reason == "unknown_kind"
    ack = wire.parse(wire.pack(wire.ACK, {"session": "s", "acked": [1, 2], "rejected": []}), "robot")
    assert ack.header["acked"] == [1, 2]
    with pytest.raises(wire.ProtocolError, match="'acked'"):
        wire.parse(wire.pack(wire.ACK, {"session": "s", "acked": [-1], "rejected": []}), "robot")


# ------------------------------------------------------------------ record log and spool


def encoded(n, start=0):
    return [wire.encode_transition(transition(*divmod(i, 10)), SPECS, wire.Codec()) for i in range(start, start + n)]


def test_spool_keeps_unacknowledged_transitions_across_a_restart(tmp_path):
    spool = Spool(tmp_path / "spool")
    seqs = spool.append(encoded(6))
    assert seqs == [0, 1, 2, 3, 4, 5]
    assert spool.ack([0, 1, 4, 99]) == 3  # 99 was never spooled
    spool.close()

    spool = Spool(tmp_path / "spool")
    assert spool.unacked() == [2, 3, 5]
    assert spool.get(3).item["step"] == 3 and spool.get(4) is None
    assert spool.append(encoded(1, start=6)) == [6]  # numbering continues after a restart
    spool.close()


def test_spool_sends_its_newest_transitions_from_memory_and_older_ones_from_disk(tmp_path):
    batch = encoded(6)
    size = sum(len(f) for f in batch[0].frames)
    spool = Spool(tmp_path / "spool", recent_bytes=3 * size)  # room for the newest three
    spool.append(batch)
    segment = max((tmp_path / "spool").glob("*.log"))
    pristine = segment.read_bytes()
    segment.write_bytes(bytes(len(pristine)))  # the disk no longer holds them
    assert [spool.get(seq).item["step"] for seq in (3, 4, 5)] == [3, 4, 5]
    with pytest.raises(ValueError):  # read from the (zeroed) disk
        spool.get(0)
    segment.write_bytes(pristine)
    assert spool.get(0).item["step"] == 0 and spool.get(5).item["step"] == 5  # after the first send: from disk
    spool.close()


def test_a_spool_in_a_format_this_version_does_not_read_is_refused_with_a_clear_error(tmp_path):
    old = SegmentLog(tmp_path / "spool", segment_bytes=1 << 20)
    old.append([[b"T" + bytes(8) + msgpack.packb([{"step": 0}, [b"png"]])]])  # the previous format
    old.close()
    with pytest.raises(RecordFormatError, match="move the spool aside"):
        Spool(tmp_path / "spool")
    with pytest.raises(LinkConfigError, match="move the spool aside"):  # the node reports it in one line
        ZmqTrainerLink(robot_config("tcp://127.0.0.1:1", tmp_path / "spool", keys=None))


def test_spool_survives_a_torn_last_record(tmp_path):
    spool = Spool(tmp_path / "spool")
    spool.append(encoded(3))
    spool.close()
    segment = max((tmp_path / "spool").glob("*.log"))
    data = segment.read_bytes()
    segment.write_bytes(data[:-10])  # killed in the middle of writing the last record

    spool = Spool(tmp_path / "spool")
    assert spool.unacked() == [0, 1]
    assert spool.append(encoded(1)) == [2]  # the torn number is reused: it never reached the trainer
    spool.close()


def test_a_full_spool_drops_the_oldest_and_counts_them(tmp_path, caplog):
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20)  # 8 segments of 128 KiB
    big = encoded(1)[0]
    big.frames = [os.urandom(200_000)]
    for _ in range(12):
        spool.append([big])
    assert spool.dropped > 0 and len(spool) == 12 - spool.dropped
    assert spool.size_bytes <= 1 << 20
    assert spool.unacked()[0] == spool.dropped  # the oldest went first
    assert "spool is full" in caplog.text
    spool.close()


def test_fully_acknowledged_segments_are_deleted(tmp_path):
    spool = Spool(tmp_path / "spool", max_bytes=8 << 20)
    big = encoded(1)[0]
    big.frames = [os.urandom(300_000)]
    seqs = [spool.append([big])[0] for _ in range(10)]
    assert len(list((tmp_path / "spool").glob("*.log"))) > 1
    spool.ack(seqs)
    assert len(list((tmp_path / "spool").glob("*.log"))) == 1 and len(spool) == 0
    spool.close()


def test_record_log_replays_records_in_order_and_reads_them_back(tmp_path):
    log = SegmentLog(tmp_path / "log", segment_bytes=100)
    locations = log.append([[b"a" * 30, b"a" * 30], [b"b" * 60]]) + log.append([[b"c", b""]])
    assert [loc.segment for loc in locations] == [1, 1, 2]  # the first append filled segment 1
    assert log.read(locations[1]) == b"b" * 60
    log.close()
    reopened = SegmentLog(tmp_path / "log", segment_bytes=100)
    assert [payload for _, payload in reopened.replay()] == [b"a" * 60, b"b" * 60, b"c"]
    assert reopened.active == 3
    reopened.close()


def test_a_synced_record_log_fsyncs_its_directory_when_it_creates_a_segment(tmp_path, monkeypatch):
    """A new segment's directory entry must reach the disk before records in it are acknowledged,
    else power loss can drop the whole file even though its bytes were fsynced."""
    real_fsync, synced = os.fsync, []
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.path.realpath(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    log = SegmentLog(tmp_path / "log", segment_bytes=100, sync=True)
    log.append([[b"a" * 120]])  # fills segment 1
    log.append([[b"b" * 10]])  # so this one opens segment 2
    log.close()
    assert (tmp_path / "log" / "00000002.log").is_file()
    assert synced == [str((tmp_path / "log").resolve())] * 2  # at segment 1's creation and at segment 2's (records: fdatasync)


def test_record_log_finishes_short_writes(tmp_path, monkeypatch):
    real_writev = os.writev
    monkeypatch.setattr(os, "writev", lambda fd, parts: real_writev(fd, [bytes(parts[0])[:7]]))  # at most 7 bytes a call
    log = SegmentLog(tmp_path / "log", segment_bytes=1 << 20)
    records = [[b"head", bytes(range(50))], [b"x" * 20], *[[b"%d" % i] for i in range(2000)]]  # more parts than one writev takes
    log.append(records)
    log.close()
    monkeypatch.undo()
    assert [payload for _, payload in SegmentLog(tmp_path / "log", segment_bytes=1 << 20).replay()] == [b"".join(r) for r in records]


def test_blob_records_keep_their_head_and_blobs():
    head, blobs = ["robot1", "png", {"step": 3}], [b"\x89PNG" + bytes(100), b"", b"next"]
    assert read_blob_record(b"".join(blob_record(head, blobs))) == (head, blobs)


# ------------------------------------------------------------------ keys


def test_generated_keys_load_with_pyzmq_and_ours(tmp_path):
    public, secret = generate("robot7", tmp_path)
    assert (public.name, secret.name) == ("robot7.key", "robot7.key_secret")
    assert oct(secret.stat().st_mode & 0o777) == "0o600"
    assert zmq.auth.load_certificate(public)[0] == load_public(public)
    assert load_keypair(secret)[0] == load_public(public)
    with pytest.raises(KeyFileError, match="already exists"):
        generate("robot7", tmp_path)
    with pytest.raises(KeyFileError, match="holds no secret key"):
        load_keypair(public)
    with pytest.raises(KeyFileError, match="no such key file"):
        load_public(tmp_path / "nope.key")


def test_o2o_keys_command_line(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "robot_node.keys", *args], capture_output=True, text=True, timeout=60)

    done = run("generate", "trainer", "--out", str(tmp_path / "keys"))
    assert done.returncode == 0 and "trainer.key_secret" in done.stdout
    assert (tmp_path / "keys" / "trainer.key").is_file()
    again = run("generate", "trainer", "--out", str(tmp_path / "keys"))
    assert again.returncode == 1
    assert again.stderr.strip().count("\n") == 0 and "already exists" in again.stderr and "Traceback" not in again.stderr


@pytest.mark.parametrize(
    "observation_spec",
    [
        "[" * 5000,  # nested deeper than the JSON parser recurses
        '{"image": {"shape": [1e999, 8, 3], "dtype": "uint8"}, "state": {"shape": [0], "dtype": "float32", "names": []}}',
        '{"image": {"shape": ["a", 8, 3], "dtype": "uint8"}, "state": {"shape": [0], "dtype": "float32", "names": []}}',
    ],
)
def test_a_hello_with_a_pathological_spec_is_a_protocol_error(observation_spec):
    fields = {"robot": "robot1", "observation_spec": observation_spec, "action_spec": ACT.to_json(), "weights_version": -1}
    message = wire.parse(wire.pack(wire.HELLO, fields), "trainer")
    with pytest.raises(wire.ProtocolError) as refused:
        wire.parse_specs(message.header)
    assert refused.value.reason == "bad_spec"


def test_weights_with_a_pathological_action_spec_are_a_protocol_error():
    onnx = b"model"
    action_spec = '{"dtype": "float32", "names": ["a"], "shape": [1], "low": "a", "high": "b"}'
    header = {"session": "s", "version": 1, "train_step": 0, "sha256": hashlib.sha256(onnx).hexdigest(), "observation_spec": OBS.to_json(), "action_spec": action_spec, "nbytes": len(onnx), "offset": 0}
    with pytest.raises(wire.ProtocolError) as refused:
        wire.WeightsReceiver().add(wire.parse(wire.pack(wire.WEIGHTS, header, [onnx]), "robot"))
    assert refused.value.reason == "bad_spec"


def test_a_step_outside_int64_is_refused_when_encoded_not_when_spooled():
    with pytest.raises(wire.ProtocolError) as refused:
        wire.encode_transition(dataclasses.replace(transition(0, 5), step=2**64), SPECS, wire.Codec())
    assert refused.value.reason == "bad_item"
