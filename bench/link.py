"""Robot <-> trainer link over loopback: transitions/s, MB/s, and weight-push latency.

Each run puts the trainer (TrainerServer + TransitionStore on a temporary directory, fsync
before every ACK as deployed) in this process and the robot (ZmqTrainerLink with its spool) in
a child process, so the two ends share the machine's cores as they would share nothing else.
A throughput figure is N transitions from the first submit to the last acknowledgement (the
trainer has them fsynced in its write-ahead log), frames from a synthetic camera (smooth scene,
moving object, +-2 levels of sensor noise: PNG costs what it costs on a real camera, not on a
noiseless render). The run is one long episode, so the dataset writer (np.savez_compressed,
zlib level 6: on this machine slower than the link) runs after the last ACK instead of taking
the link's cores, as it would on a trainer workstation with cores to spare; the same run also
reports transitions/s into the dataset, writer included.

Baseline, in the same run: what existing actor/learner code does — each transition pickled
with obs and next_obs, lz4-compressed, over a plain PUSH/PULL socket, no acknowledgement, no
disk, no checks (the only pickle in this project; it never leaves this script).

Weight push: trainer push_weights -> the robot child holds a validated new session (it polls
latest_weights every millisecond, then calls robot_node.policy.load_policy, the node's checks
before a hot swap). Models: about 1 MB, and a 5-member DrQ-v2-style pixel ensemble of about 10M
parameters (41 MB), built here with torch (trainer/export.py is not on main yet) and labelled
with the metadata the exporter writes.

Last line: one JSON object. The machine may be shared: expect noise, compare ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# This script is named like the modules it measures: keep its own directory off the import path.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import numpy as np  # noqa: E402
import zmq  # noqa: E402

from robot_node import protocol as wire  # noqa: E402
from robot_node.keys import generate  # noqa: E402
from robot_node.link import LinkConfig, ZmqTrainerLink  # noqa: E402
from robot_node.link_interface import PolicyWeights, Transition  # noqa: E402
from robot_node.policy import load_policy  # noqa: E402
from robot_node.spec import ActionSpec, ObservationSpec  # noqa: E402
from trainer.link import ServerConfig, TrainerServer  # noqa: E402
from trainer.transition_store import TransitionStore  # noqa: E402

STATE_NAMES = ("j0", "j1", "j2", "j3", "j4", "finger", "gripper_open")
ACTION = ActionSpec()
POLICY_SPEC = ObservationSpec((84, 84, 3), STATE_NAMES)


def log(message: str) -> None:
    print(f"[bench/link] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- data


def camera_frames(size: int, count: int, seed: int = 0) -> list[np.ndarray]:
    """Camera-like RGB frames: gradients, a moving box, sensor noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    frames = []
    for i in range(count):
        img = np.stack([180 * x + 40, 120 * y + 60, 90 * (1 - x * y) + 30], axis=-1)
        cx, cy, r = int(size * (0.3 + 0.4 * (i % 17) / 17)), int(size * 0.55), size // 8
        img[cy - r : cy + r, cx - r : cx + r] = (200, 40, 50)
        img += rng.normal(0, 1.2, img.shape)
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    return frames


def transitions(size: int, count: int) -> list[Transition]:
    """`count` transitions of one episode."""
    frames = camera_frames(size, 64)
    rng = np.random.default_rng(1)
    out = []
    for i in range(count):
        last = i == count - 1
        out.append(Transition(
            episode_id="bench", step=i, image=frames[i % 64],
            state=rng.standard_normal(len(STATE_NAMES)).astype(np.float32), action=rng.uniform(-1, 1, 4).astype(np.float32),
            reward=float(last), terminal=last, truncated=False, policy_version=0, stamp=time.time(),
            next_image=frames[(i + 1) % 64] if last else None, next_state=np.zeros(len(STATE_NAMES), np.float32) if last else None,
        ))
    return out


# ---------------------------------------------------------------------------- robot child


def robot_child(args: argparse.Namespace) -> None:
    """The robot end, in its own process. Prints one JSON line per result."""
    size = args.size
    config = LinkConfig(
        endpoint=args.endpoint, robot_id="bench-robot", spool_dir=args.spool,
        observation_spec=ObservationSpec((size, size, 3), STATE_NAMES), action_spec=ACTION,
        codec=wire.Codec(args.codec), insecure=not args.keys,
        secret_key=f"{args.keys}/robot.key_secret" if args.keys else None, trainer_key=f"{args.keys}/trainer.key" if args.keys else None,
    )
    logging_quiet()
    link = ZmqTrainerLink(config)
    wait(lambda: link.status().connected, 30)
    if args.mode == "throughput":
        stream = transitions(size, args.count)
        start = time.monotonic()
        print(json.dumps({"start": start}), flush=True)
        for t in stream:
            while not link.submit(t):
                time.sleep(0.0005)  # queue full: the bench offers more than the link takes
        wait(lambda: link.status().counters["acked"] >= args.count, 600)
        elapsed = time.monotonic() - start
        counters = link.status().counters
        print(json.dumps({"elapsed": elapsed, "sent_bytes": counters["sent_bytes"], "resent": counters["resent"]}), flush=True)
    else:  # weights: report when each new version is a validated session
        held = -1
        print(json.dumps({"ready": True}), flush=True)
        while True:
            weights = link.latest_weights(held)
            if weights is None:
                time.sleep(0.001)
                continue
            load_policy(weights, config.observation_spec, config.action_spec)  # what the node does before a swap
            held = weights.version
            print(json.dumps({"version": held, "t": time.monotonic()}), flush=True)
    link.close()


def wait(predicate, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("bench: timed out")
        time.sleep(0.001)


def logging_quiet() -> None:
    import logging

    logging.basicConfig(level=logging.ERROR)


# ---------------------------------------------------------------------------- trainer side


class Child:
    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)

    def line(self, timeout_s: float = 600) -> dict:
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(self.proc.stdout.readline()))
        reader.start()
        reader.join(timeout_s)
        if not result or not result[0]:
            self.proc.kill()
            raise RuntimeError(f"robot child gave no result (exit code {self.proc.poll()})")
        return json.loads(result[0])

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def trainer(workdir: Path, obs: ObservationSpec, keys: Path | None) -> TrainerServer:
    store = TransitionStore(workdir / "storage", observation_spec=obs, action_spec=ACTION, task="bench", env_id="bench", max_episode_steps=100_000)
    secure = {"secret_key": str(keys / "trainer.key_secret"), "allow_dir": str(keys / "allow")} if keys else {"insecure": True}
    return TrainerServer(ServerConfig(bind="tcp://127.0.0.1:0", **secure), store)


def throughput(size: int, codec: str, curve: bool, count: int, keys: Path) -> dict:
    """Acknowledged (in the trainer's write-ahead log) and written (episodes in the dataset) per second."""
    with tempfile.TemporaryDirectory() as tmp:
        server = trainer(Path(tmp), ObservationSpec((size, size, 3), STATE_NAMES), keys if curve else None)
        child = Child("--child", "throughput", "--endpoint", server.endpoint, "--spool", f"{tmp}/spool", "--size", str(size),
                      "--codec", codec, "--count", str(count), *(["--keys", str(keys)] if curve else []))
        try:
            start = child.line(60)["start"]
            result = child.line()
            wait(lambda: server.store.counters["episodes_written"] >= 1, 600)
            written = time.monotonic() - start
        finally:
            child.stop()
            server.close()
    rate = count / result["elapsed"]
    mb_s = result["sent_bytes"] / result["elapsed"] / 1e6
    log(f"{'curve' if curve else 'plain'} {codec} {size}x{size}: {rate:,.0f} transitions/s acknowledged, {mb_s:.1f} MB/s on the wire; "
        f"{count / written:,.0f} transitions/s into the dataset")
    return {"transitions_per_s": rate, "mb_per_s": mb_s, "into_dataset_per_s": count / written}


def median_run(run, repeats: int) -> dict:
    """The run with the median acknowledged rate, of `repeats` runs (the machine may be shared)."""
    results = sorted((run() for _ in range(repeats)), key=lambda r: r["transitions_per_s"])
    return results[len(results) // 2]


def baseline_sender(endpoint: str, size: int, count: int) -> None:
    import lz4.frame

    items = transitions(size, count)
    sock = zmq.Context.instance().socket(zmq.PUSH)
    sock.connect(endpoint)
    print(json.dumps({"t0": time.monotonic()}), flush=True)
    for i, t in enumerate(items):
        nxt = items[(i + 1) % count]
        record = {"obs": {"image": t.image, "state": t.state}, "action": t.action, "reward": t.reward,
                  "next_obs": {"image": nxt.image, "state": nxt.state}, "done": t.terminal}
        sock.send(lz4.frame.compress(pickle.dumps(record, protocol=5)))
    sock.close(linger=-1)


def baseline(size: int, count: int) -> float:
    import lz4.frame

    context = zmq.Context.instance()
    sock = context.socket(zmq.PULL)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    child = Child("--child", "baseline", "--endpoint", f"tcp://127.0.0.1:{port}", "--size", str(size), "--count", str(count))
    try:
        t0 = child.line()["t0"]
        for _ in range(count):
            if not sock.poll(60_000):
                raise RuntimeError("baseline sender stalled")
            pickle.loads(lz4.frame.decompress(sock.recv()))
        rate = count / (time.monotonic() - t0)
    finally:
        child.stop()
        sock.close(linger=0)
    log(f"baseline pickle+lz4 PUSH/PULL {size}x{size}: {rate:,.0f} transitions/s")
    return rate


# ---------------------------------------------------------------------------- weight push


def policy_onnx(members: int, strides: tuple[int, ...], trunk: int, hidden: int) -> bytes:
    """A DrQ-v2-style ensemble policy with the project's ONNX contract (inputs image/state,
    outputs mean/log_std/action), exported with torch."""
    import io

    import torch
    from torch import nn

    class Ensemble(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers, channels, size = [], 3, POLICY_SPEC.image_shape[0]
            for stride in strides:
                layers += [nn.Conv2d(channels, 32, 3, stride), nn.ReLU()]
                channels, size = 32, (size - 3) // stride + 1
            self.encoder = nn.Sequential(*layers, nn.Flatten())
            features, state_dim, act = 32 * size * size, POLICY_SPEC.state_dim, ACTION.dim
            self.trunks = nn.ModuleList(nn.Sequential(nn.Linear(features, trunk), nn.LayerNorm(trunk), nn.Tanh()) for _ in range(members))
            self.heads = nn.ModuleList(
                nn.Sequential(nn.Linear(trunk + state_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 2 * act))
                for _ in range(members)
            )

        def forward(self, image: torch.Tensor, state: torch.Tensor):
            h = self.encoder(image.permute(0, 3, 1, 2).float() / 255.0 - 0.5)
            out = torch.stack([head(torch.cat([t(h), state], -1)) for t, head in zip(self.trunks, self.heads)])
            means, log_stds = out.chunk(2, -1)
            mean = means.mean(0)  # moment-matched Gaussian mixture of the members
            var = (torch.exp(2 * log_stds.clamp(-5, 2)) + means**2).mean(0) - mean**2
            return mean, 0.5 * torch.log(var.clamp_min(1e-6)), torch.tanh(mean)

    model = Ensemble().eval()
    params = sum(p.numel() for p in model.parameters())
    buffer = io.BytesIO()
    dummy = (torch.zeros(1, *POLICY_SPEC.image_shape, dtype=torch.uint8), torch.zeros(1, POLICY_SPEC.state_dim))
    torch.onnx.export(model, dummy, buffer, input_names=["image", "state"], output_names=["mean", "log_std", "action"],
                      dynamic_axes={"image": {0: "B"}, "state": {0: "B"}}, dynamo=False)
    log(f"policy: {members} members, {params / 1e6:.1f}M parameters, {len(buffer.getvalue()) / 1e6:.1f} MB of ONNX")
    return buffer.getvalue()


def with_metadata(onnx: bytes, version: int, members: int) -> bytes:
    """The model as the exporter labels it (docs/ARCHITECTURE.md, "Policy model"): load_policy
    refuses a model whose metadata version differs from the envelope's."""
    import onnx as onnx_lib

    from robot_node import spec

    model = onnx_lib.load_from_string(onnx)
    meta = {
        spec.META_VERSION: str(version), spec.META_TRAIN_STEP: str(version), spec.META_ENSEMBLE_SIZE: str(members),
        spec.META_OBSERVATION_SPEC: POLICY_SPEC.to_json(), spec.META_ACTION_SPEC: ACTION.to_json(),
    }
    onnx_lib.helper.set_model_props(model, meta)
    return model.SerializeToString()


def weight_push(onnx: bytes, members: int, pushes: int, keys: Path) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        server = trainer(Path(tmp), POLICY_SPEC, keys)
        child = Child("--child", "weights", "--endpoint", server.endpoint, "--spool", f"{tmp}/spool", "--size", "84", "--keys", str(keys))
        latencies = []
        try:
            child.line(60)  # connected and polling
            for version in range(1, pushes + 1):
                labelled = with_metadata(onnx, version, members)
                weights = PolicyWeights.from_onnx(labelled, version=version, train_step=version, observation_spec=POLICY_SPEC, action_spec=ACTION)
                sent = time.monotonic()
                server.push_weights(weights)
                result = child.line(60)
                assert result["version"] == version
                latencies.append(1000 * (result["t"] - sent))
        finally:
            child.stop()
            server.close()
    return latencies


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def plot(out: Path, rates: dict[str, float], latencies: dict[str, list[float]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    ax1.barh(list(rates), list(rates.values()), color="tab:blue")
    ax1.axvline(5000, color="tab:red", linestyle="--", label="target 5,000/s")
    ax1.set_xlabel("transitions/s (first submit to last ACK)")
    ax1.legend()
    for name, values in latencies.items():
        ax2.hist(values, bins=20, alpha=0.6, label=f"{name}: p50 {percentile(values, 50):.0f} ms, p95 {percentile(values, 95):.0f} ms")
    ax2.axvline(250, color="tab:red", linestyle="--", label="target p95 250 ms")
    ax2.set_xlabel("trainer push -> robot holds a validated session (ms)")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "link.png"
    fig.savefig(path, dpi=100)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts: under a minute")
    parser.add_argument("--out", default="runs/bench", help="where the PNG plot goes")
    parser.add_argument("--child", choices=["throughput", "baseline", "weights"], help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--spool", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=64, help=argparse.SUPPRESS)
    parser.add_argument("--codec", default="png", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--keys", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "baseline":
        baseline_sender(args.endpoint, args.size, args.count)
        return
    if args.child:
        args.mode = args.child
        robot_child(args)
        return

    n64, n128, pushes, repeats = (3000, 1000, 8, 1) if args.quick else (20_000, 6_000, 40, 3)
    with tempfile.TemporaryDirectory() as keydir:
        keys = Path(keydir)
        generate("trainer", keys)
        generate("robot", keys)
        (keys / "allow").mkdir()
        (keys / "allow" / "robot.key").write_bytes((keys / "robot.key").read_bytes())

        configs = {
            "curve_png64": (64, "png", True, n64),
            "curve_png128": (128, "png", True, n128),
            "plain_png64": (64, "png", False, n64),
            "curve_jpeg64": (64, "jpeg", True, n64),
            "curve_raw64": (64, "raw", True, n64),
        }
        runs = {name: median_run(lambda: throughput(*config, keys), repeats) for name, config in configs.items()}
        baseline_rate = statistics.median(baseline(64, n64) for _ in range(repeats))
        small = policy_onnx(members=1, strides=(2, 2, 1, 1), trunk=30, hidden=64)
        pixel = policy_onnx(members=5, strides=(2, 1, 1, 1), trunk=50, hidden=256)
        latencies = {}
        for name, onnx, members in (("1mb", small, 1), ("pixel_n5", pixel, 5)):
            latencies[name] = weight_push(onnx, members, pushes, keys)
            log(f"weight push {name} ({len(onnx) / 1e6:.1f} MB): p50 {percentile(latencies[name], 50):.0f} ms, p95 {percentile(latencies[name], 95):.0f} ms")

    png = plot(Path(args.out), {k: v["transitions_per_s"] for k, v in runs.items()} | {"baseline pickle+lz4": baseline_rate}, latencies)
    result = {
        "transitions_per_s_curve_png64": round(runs["curve_png64"]["transitions_per_s"]),
        "transitions_per_s_curve_png128": round(runs["curve_png128"]["transitions_per_s"]),
        "transitions_per_s_plain_png64": round(runs["plain_png64"]["transitions_per_s"]),
        "transitions_per_s_curve_jpeg64": round(runs["curve_jpeg64"]["transitions_per_s"]),
        "transitions_per_s_curve_raw64": round(runs["curve_raw64"]["transitions_per_s"]),
        "mb_per_s": {name: round(r["mb_per_s"], 1) for name, r in runs.items()},
        "into_dataset_transitions_per_s": {name: round(r["into_dataset_per_s"]) for name, r in runs.items()},
        "baseline_transitions_per_s": round(baseline_rate),
        "ratio_to_baseline": round(runs["curve_png64"]["transitions_per_s"] / baseline_rate, 2),
        "weight_push_p50_ms": round(percentile(latencies["pixel_n5"], 50), 1),
        "weight_push_p95_ms": round(percentile(latencies["pixel_n5"], 95), 1),
        "weight_push_1mb_p50_ms": round(percentile(latencies["1mb"], 50), 1),
        "weight_push_1mb_p95_ms": round(percentile(latencies["1mb"], 95), 1),
        "pixel_policy_mb": round(len(pixel) / 1e6, 1),
        "pushes_per_model": pushes,
        "plot": str(png),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
