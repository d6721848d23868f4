"""Helpers for the robot-node tests and bench/node.py: contract-conforming ONNX policies built
with torch (robot_node itself never imports torch), loopback DDS settings, and the node as a
subprocess.
"""

from __future__ import annotations

import io
import itertools
import os
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from robot_node.link_interface import PolicyWeights
from trainer.demo import CYCLONE_LOOPBACK  # the demo keeps its DDS traffic on loopback as the tests do
from robot_node.spec import (
    META_ACTION_SPEC,
    META_ENSEMBLE_SIZE,
    META_OBSERVATION_SPEC,
    META_TRAIN_STEP,
    META_VERSION,
    ActionSpec,
    ObservationSpec,
)

ROOT = Path(__file__).resolve().parents[1]
OBS = ObservationSpec((64, 64, 3), ("joint_a", "joint_b"))
ACT = ActionSpec()  # dx, dy, dz, gripper in [-1, 1]


# --- policies -------------------------------------------------------------------------------


class ConstantPolicy(nn.Module):
    """mean = atanh(target): the deterministic action is exactly `target`, whatever it sees.

    The image and state still flow through the graph (scaled by zero), so the inputs stay real
    inputs. With `nan_above` set, the outputs turn NaN when the image's mean brightness exceeds
    it: a model that passes the probe image but misbehaves on the robot.
    """

    def __init__(self, target: list[float], log_std: float = -20.0, nan_above: float | None = None) -> None:
        super().__init__()
        self.register_buffer("mean", torch.atanh(torch.tensor(target, dtype=torch.float32)))
        self.log_std, self.nan_above = log_std, nan_above

    def forward(self, image: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        brightness = image.float().mean(dim=(1, 2, 3), keepdim=False)[:, None] / 255.0
        mean = self.mean[None] + 0.0 * brightness
        if state is not None:
            mean = mean + 0.0 * state.sum(dim=1, keepdim=True)
        if self.nan_above is not None:
            mean = torch.where(brightness > self.nan_above, torch.full_like(mean, float("nan")), mean)
        log_std = torch.full_like(mean, self.log_std)
        return mean, log_std, torch.tanh(mean)


class PixelEnsemblePolicy(nn.Module):
    """A DrQ-v2-style pixel ensemble of realistic size: a shared conv encoder (4 layers, 32
    channels, strides 2,1,1,1), then per member a Linear(..., 50) + LayerNorm + tanh trunk and a
    256-256 head; the members' Gaussians are combined by moment matching, as the exporter does."""

    def __init__(self, obs: ObservationSpec, act: ActionSpec, members: int = 5, hidden: int = 256) -> None:
        super().__init__()
        h, w, _ = obs.image_shape
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 32, 3, stride=2), nn.ReLU(),
            nn.Conv2d(32, 32, 3, stride=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, stride=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, stride=1), nn.ReLU(),
            nn.Flatten(),
        )
        features = self.encoder(torch.zeros(1, 3, h, w)).shape[1]
        self.members, self.state_dim, self.act_dim = members, obs.state_dim, act.dim

        def stacked(fan_in: int, fan_out: int) -> nn.Parameter:
            return nn.Parameter(torch.randn(members, fan_in, fan_out) / fan_in**0.5)

        self.trunk = stacked(features, 50)
        self.norm = nn.LayerNorm(50)
        self.w1 = stacked(50 + obs.state_dim, hidden)
        self.w2 = stacked(hidden, hidden)
        self.w3 = stacked(hidden, 2 * act.dim)

    def forward(self, image: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        x = self.encoder(image.permute(0, 3, 1, 2).float() / 255.0 - 0.5)
        z = torch.tanh(self.norm(torch.matmul(x[None], self.trunk)))  # [N, B, 50]
        if state is not None:
            z = torch.cat([z, state[None].expand(self.members, -1, -1)], dim=-1)
        z = torch.relu(torch.matmul(z, self.w1))
        z = torch.relu(torch.matmul(z, self.w2))
        mu, log_std = torch.matmul(z, self.w3).chunk(2, dim=-1)
        log_std = torch.clamp(log_std, -5.0, 2.0)
        mean = mu.mean(0)
        var = (torch.exp(2 * log_std) + mu**2).mean(0) - mean**2
        return mean, 0.5 * torch.log(var.clamp_min(1e-8)), torch.tanh(mean)


def export_policy(
    module: nn.Module,
    obs: ObservationSpec = OBS,
    act: ActionSpec = ACT,
    *,
    version: int = 1,
    train_step: int = 0,
    ensemble_size: int = 1,
    input_names: tuple[str, ...] | None = None,
    output_names: tuple[str, ...] = ("mean", "log_std", "action"),
    image_dtype: torch.dtype = torch.uint8,
    metadata: dict[str, str] | None = None,
) -> bytes:
    """ONNX bytes as the trainer's exporter writes them (names, dynamic batch, metadata)."""
    h, w, _ = obs.image_shape
    args: tuple[torch.Tensor, ...] = (torch.zeros(1, h, w, 3, dtype=image_dtype),)
    names = input_names or (("image", "state") if obs.state_dim else ("image",))
    if obs.state_dim:
        args += (torch.zeros(1, obs.state_dim),)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            args,
            buffer,
            input_names=list(names),
            output_names=list(output_names),
            dynamic_axes={name: {0: "batch"} for name in (*names, *output_names)},
            dynamo=False,
        )
    model = onnx.load_from_string(buffer.getvalue())
    meta = {
        META_VERSION: str(version),
        META_TRAIN_STEP: str(train_step),
        META_OBSERVATION_SPEC: obs.to_json(),
        META_ACTION_SPEC: act.to_json(),
        META_ENSEMBLE_SIZE: str(ensemble_size),
        **(metadata or {}),
    }
    onnx.helper.set_model_props(model, {k: v for k, v in meta.items() if v is not None})
    return model.SerializeToString()


def constant_model(target: list[float], *, version: int = 1, obs: ObservationSpec = OBS, **kwargs) -> bytes:
    policy_kwargs = {k: kwargs.pop(k) for k in ("log_std", "nan_above") if k in kwargs}
    return export_policy(ConstantPolicy(target, **policy_kwargs), obs, ACT, version=version, **kwargs)


def weights(onnx_bytes: bytes, version: int, obs: ObservationSpec = OBS) -> PolicyWeights:
    return PolicyWeights.from_onnx(onnx_bytes, version=version, train_step=10 * version, observation_spec=obs, action_spec=ACT)


class ListLogger:
    """A Logger (robot_node.ros.port) that keeps every line."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def debug(self, message: str) -> None:
        self.lines.append(message)

    info = warning = error = debug


# --- DDS on loopback ------------------------------------------------------------------------

_domains = itertools.count()


def unique_domain_id() -> int:
    """Distinct per test and unlikely to match another process on this machine (ids 1..230)."""
    return 1 + (os.getpid() * 13 + next(_domains)) % 230


def ros_domain_id() -> int:
    """A distinct domain in 1..100, the range the ROS docs call safe for rclpy's middlewares on Linux."""
    return 1 + unique_domain_id() % 100


def dds_env(domain_id: int) -> dict[str, str]:
    return {"CYCLONEDDS_URI": CYCLONE_LOOPBACK, "ROS_DOMAIN_ID": str(domain_id)}


def wait_until(condition: Callable[[], object], timeout: float, what: str, poll: float = 0.01) -> object:
    """Poll `condition` until it is truthy; fail the test naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(poll)


def start_robot(args: list[str], domain_id: int) -> subprocess.Popen:
    """`o2o-robot ARGS` as a real subprocess on a private loopback DDS domain."""
    env = {**os.environ, **dds_env(domain_id), "PYTHONUNBUFFERED": "1"}
    exe = Path(sys.executable).with_name("o2o-robot")
    return subprocess.Popen(
        [str(exe), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT
    )


def stop(process: subprocess.Popen, timeout: float = 10.0) -> str:
    """SIGTERM, wait, and return everything it printed (SIGKILL if it does not exit)."""
    if process.poll() is None:
        process.terminate()
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
    return out


def image_msg(value: int | np.ndarray, size: int = 64, encoding: str = "rgb8"):
    from robot_node.ros.messages import Image

    pixels = value if isinstance(value, np.ndarray) else np.full((size, size, 3), value, np.uint8)
    h, w, _ = pixels.shape
    return Image(h, w, encoding, 3 * w, pixels.tobytes(), stamp=time.time())


class FakeRobot:
    """The world the node talks to, over real DDS: a camera and joint encoders publishing at a
    rate, a reset service answering episode/reset with episode/ready, and recorders for the
    node's commands and diagnostics."""

    def __init__(self, domain_id: int, rate_hz: float = 30.0, pixel: int = 100, size: int = 64) -> None:
        from robot_node.ros import messages as m
        from robot_node.ros import port
        from robot_node.ros.dds import DdsPort

        self.port = DdsPort("fake_robot", domain_id=domain_id)
        self.rate_hz, self.pixel, self.size = rate_hz, pixel, size
        self.commands: list[tuple[float, list[float]]] = []
        self.diagnostics: list = []
        self.camera = self.port.create_publisher(m.Image, "camera/image_raw", port.SENSOR_DATA)
        self.joints = self.port.create_publisher(m.JointState, "joint_states", port.SENSOR_DATA)
        self.ready = self.port.create_publisher(m.Empty, "episode/ready", port.DEFAULT)
        self.estop = self.port.create_publisher(m.Bool, "estop", port.LATCHED)
        self.port.create_subscription(
            m.Float64MultiArray, "command", port.DEFAULT, lambda c: self.commands.append((time.monotonic(), c.data))
        )
        self.port.create_subscription(m.DiagnosticArray, "/diagnostics", port.DEFAULT, self.diagnostics.append)
        self.port.create_subscription(m.Empty, "episode/reset", port.DEFAULT, lambda _: self.ready.publish(m.Empty()))
        self.publishing = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._publish_loop, daemon=True)

    def start(self) -> FakeRobot:
        self.port.spin_in_background()
        self.publishing.set()
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout=5)
        self.port.shutdown()

    def publish_observation(self) -> None:
        from robot_node.ros import messages as m

        self.joints.publish(m.JointState(["joint_b", "joint_a"], [0.2, 0.1], stamp=time.time()))
        self.camera.publish(image_msg(self.pixel, self.size))

    def status(self, suffix: str):
        """The newest DiagnosticStatus whose name ends with `suffix`, or None."""
        for array in reversed(self.diagnostics):
            for status in array.status:
                if status.name.endswith(suffix):
                    return status
        return None

    def _publish_loop(self) -> None:
        period = 1.0 / self.rate_hz
        while not self._stop.wait(period):
            if self.publishing.is_set():
                self.publish_observation()
