"""Robot node latency: image in -> command out through real DDS, and onnxruntime vs torch.

For each policy (N = 1 or 5 ensemble members, 64x64 or 128x128 images; the trainer's default
pixel ensemble, exported by trainer/export.py exactly as the robot receives it, with the
simulator's joint names as state) an `o2o-robot` subprocess runs with
trigger=image. This process publishes a joint state and an image, and times until the command
computed from that image arrives: DDS both ways, deserialisation, preprocessing, ONNX
inference, safety, serialisation. One image at a time, at a camera-like pace.
Then the same N=5 64x64 policy is timed batch-1 in onnxruntime and in torch eager, interleaved,
with 2 threads (as the node runs) and with 1.

Prints one JSON object last. Writes a latency histogram PNG to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# bench/sim.py is named like the simulator package: keep this directory off the import path.
if sys.path and Path(sys.path[0]).resolve() == ROOT / "bench":
    sys.path.pop(0)
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402  (torch only here, never in robot_node)
from node_helpers import dds_env, image_msg, start_robot, stop, unique_domain_id  # noqa: E402

from robot_node.policy import load_policy_file, probe_image  # noqa: E402
from robot_node.ros import messages as m  # noqa: E402
from robot_node.ros import port  # noqa: E402
from robot_node.spec import ActionSpec, ObservationSpec  # noqa: E402
from sim.robot import STATE_JOINTS as JOINTS  # noqa: E402
from trainer.agent import EnsembleAgent  # noqa: E402
from trainer.export import PolicyGraph, export_onnx  # noqa: E402
from trainer.networks import NetworkConfig  # noqa: E402

CONFIGS = [(5, 64), (5, 128), (1, 64), (1, 128)]


def make_policy(members: int, size: int) -> tuple[PolicyGraph, bytes, ObservationSpec]:
    """The trainer's default ensemble (untrained weights: latency does not depend on them)."""
    torch.manual_seed(0)
    obs = ObservationSpec((size, size, 3), JOINTS)
    agent = EnsembleAgent(obs, ActionSpec(), NetworkConfig(ensemble_size=members))
    return PolicyGraph(agent).eval(), export_onnx(agent, version=1, train_step=0), obs


def measure_latency(members: int, size: int, samples: int, workdir: Path) -> np.ndarray:
    from robot_node.ros.dds import DdsPort

    _, onnx_bytes, _ = make_policy(members, size)
    model = workdir / f"policy_n{members}_{size}.onnx"
    model.write_bytes(onnx_bytes)
    domain = unique_domain_id()
    os.environ.update(dds_env(domain))
    node = start_robot(
        [
            "--params", str(ROOT / "config" / "robot.yaml"),
            "-p", f"model_path:={model}", "-p", "trigger:=image", "-p", "require_ready:=false",
            "-p", "explore:=false", "-p", "max_episode_steps:=1000000", "-p", "max_action_change:=[2.0]",
        ],
        domain,
    )
    bench = DdsPort("latency_bench", domain_id=domain)
    arrived = threading.Event()
    received: list[float] = []

    def on_command(_msg: m.Float64MultiArray) -> None:
        received.append(time.perf_counter())
        arrived.set()

    bench.create_subscription(m.Float64MultiArray, "command", port.DEFAULT, on_command)
    camera = bench.create_publisher(m.Image, "camera/image_raw", port.SENSOR_DATA)
    joints = bench.create_publisher(m.JointState, "joint_states", port.SENSOR_DATA)
    bench.spin_in_background()
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(8)]
    latencies, warmup, deadline = [], 20, time.monotonic() + 60
    try:
        while len(latencies) < samples + warmup:
            if time.monotonic() > deadline or node.poll() is not None:
                raise RuntimeError(f"no commands from the node (n={members}, {size}px):\n{stop(node)[-2000:]}")
            joints.publish(m.JointState(list(JOINTS), [0.0] * len(JOINTS), stamp=time.time()))
            msg = image_msg(frames[len(latencies) % len(frames)])
            arrived.clear()
            sent = time.perf_counter()
            camera.publish(msg)
            if arrived.wait(0.5):
                latencies.append((received[-1] - sent) * 1e3)
            time.sleep(0.02)  # a 30-50 Hz camera, not a flood
    finally:
        bench.shutdown()
        stop(node)
    return np.asarray(latencies[warmup:])


def inference_speed(repeats: int, threads: int) -> dict[str, float]:
    """Batch-1 p50 of the same N=5 64x64 policy: onnxruntime session vs torch eager, with the
    same number of threads, interleaved so that both see the same machine load."""
    policy, onnx_bytes, obs = make_policy(5, 64)
    with tempfile.NamedTemporaryFile(suffix=".onnx") as f:
        f.write(onnx_bytes)
        f.flush()
        runner = load_policy_file(f.name, threads=threads)
    image, state = probe_image(obs.image_shape), np.zeros(obs.state_dim, np.float32)
    torch.set_num_threads(threads)
    with torch.no_grad():
        timg, tstate = torch.from_numpy(image[None]), torch.from_numpy(state[None])
        runs = {"ort": lambda: runner.infer(image, state), "torch": lambda: policy(timg, tstate)}
        times: dict[str, list[float]] = {name: [] for name in runs}
        for i in range(10 + repeats):
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                if i >= 10:
                    times[name].append((time.perf_counter() - start) * 1e3)
    return {name: float(np.percentile(values, 50)) for name, values in times.items()}


def plot(latencies: dict[str, np.ndarray], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    top = max(np.percentile(v, 99.5) for v in latencies.values())
    bins = np.linspace(0, top * 1.05, 60)
    for label, values in latencies.items():
        ax.hist(values, bins=bins, histtype="step", linewidth=1.5, label=f"{label} (p99 {np.percentile(values, 99):.2f} ms)")
    ax.axvline(5.0, color="k", linestyle="--", linewidth=1, label="target p99, N=5 64px")
    ax.set_xlabel("image in -> command out (ms), real DDS on loopback")
    ax.set_ylabel("count")
    ax.set_title("o2o_rl robot node latency")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples (under a minute)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench", help="where the PNG goes")
    args = parser.parse_args()
    samples, repeats = (150, 100) if args.quick else (1000, 500)
    # Timings are only as quiet as the machine: the load at the start goes into the figures.
    results: dict[str, float] = {"loadavg_1min_at_start": round(os.getloadavg()[0], 2)}
    latencies: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for members, size in CONFIGS:
            start = time.monotonic()
            values = measure_latency(members, size, samples, Path(tmp))
            latencies[f"N={members} {size}px"] = values
            p50, p99 = np.percentile(values, [50, 99])
            results[f"latency_p50_ms_n{members}_{size}"] = round(float(p50), 3)
            results[f"latency_p99_ms_n{members}_{size}"] = round(float(p99), 3)
            print(
                f"N={members} {size}px: {len(values)} images, p50 {p50:.2f} ms, p99 {p99:.2f} ms "
                f"({time.monotonic() - start:.1f} s)",
                flush=True,
            )
    # Two threads as the node runs it (the headline figure), and one thread: compute alone,
    # without the thread-pool synchronisation that a loaded machine punishes.
    for threads, suffix in ((2, ""), (1, "_1thread")):
        timing = inference_speed(repeats, threads)
        print(
            f"batch-1 inference N=5 64px, {threads} thread(s): onnxruntime {timing['ort']:.2f} ms, "
            f"torch eager {timing['torch']:.2f} ms",
            flush=True,
        )
        results[f"ort_p50_ms_n5_64{suffix}"] = round(timing["ort"], 3)
        results[f"torch_p50_ms_n5_64{suffix}"] = round(timing["torch"], 3)
        results[f"ort_over_torch_speedup{suffix}"] = round(timing["torch"] / timing["ort"], 2)
    png = args.out / "node_latency.png"
    plot(latencies, png)
    print(f"latency histogram: {png}", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
