"""/diagnostics for the robot node: one DiagnosticStatus per concern, as diagnostic_aggregator
expects. Values are the counters an operator needs to tell a healthy robot from a stuck one.
"""

from __future__ import annotations

import numpy as np

from robot_node.control import ERROR, ESTOP, INACTIVE, STALE, ControlLoop
from robot_node.link_interface import LinkStatus
from robot_node.ros.messages import DiagnosticStatus

_MODE_LEVEL = {ERROR: DiagnosticStatus.ERROR, STALE: DiagnosticStatus.STALE, ESTOP: DiagnosticStatus.WARN, INACTIVE: DiagnosticStatus.WARN}


def _percentile(values: object, q: float) -> str:
    data = np.fromiter(values, float)
    return f"{np.percentile(data, q):.2f}" if data.size else "nan"


def _rate(times: object) -> float:
    t = list(times)
    return (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else 0.0


def build_statuses(node_name: str, loop: ControlLoop, link: LinkStatus) -> list[DiagnosticStatus]:
    c, runner, episodes = loop.counters, loop.runner, loop.episodes
    control = DiagnosticStatus(
        level=_MODE_LEVEL.get(loop.mode, DiagnosticStatus.OK),
        name=f"{node_name}: control",
        message=loop.mode + (f": {loop.mode_detail}" if loop.mode_detail else ""),
        values={
            "mode": loop.mode,
            "rate_hz": f"{_rate(loop.tick_times):.2f}",
            "target_rate_hz": f"{loop.params.control_rate_hz:.2f}",
            "trigger": loop.params.trigger,
            "inference_ms_p50": _percentile(loop.inference_ms, 50),
            "inference_ms_p99": _percentile(loop.inference_ms, 99),
            "image_age_s": "none" if loop.image_age() is None else f"{loop.image_age():.3f}",
            "estop": str(loop.estop).lower(),
            **{
                key: str(c[key])
                for key in (
                    "ticks", "missed_ticks", "stale_ticks", "holds", "clipped", "rate_limited", "workspace",
                    "nonfinite", "estops", "bad_images", "bad_joint_states", "bad_ee_positions",
                )
            },
        },
    )
    policy = DiagnosticStatus(
        # WARN while the newest offered model has been refused and the node runs an older one.
        level=DiagnosticStatus.WARN if loop.swapper.highest_offered > runner.version and not loop.swapper.busy else DiagnosticStatus.OK,
        name=f"{node_name}: policy",
        message=f"version {runner.version}" + (f"; last refused {loop.swapper.last_rejection}" if loop.swapper.rejected else ""),
        values={
            "version": str(runner.version),
            "train_step": str(runner.train_step),
            "ensemble_size": str(runner.ensemble_size),
            "sha256": runner.sha256,
            "explore": str(loop.params.explore).lower(),
            "swaps": str(c["swaps"]),
            "refused": str(loop.swapper.rejected),
            "last_refusal": loop.swapper.last_rejection,
        },
    )
    link_status = DiagnosticStatus(
        level=DiagnosticStatus.OK if link.connected else DiagnosticStatus.WARN,
        name=f"{node_name}: link",
        message=("connected" if link.connected else "disconnected") + (f": {link.detail}" if link.detail else ""),
        values={
            "connected": str(link.connected).lower(),
            "peer": loop.params.trainer_endpoint or "none",
            "transitions_submitted": str(c["transitions_submitted"]),
            "transitions_dropped": str(c["transitions_dropped"]),
            **{f"link_{k}": str(v) for k, v in link.counters.items()},
        },
    )
    episode = DiagnosticStatus(
        level=DiagnosticStatus.OK,
        name=f"{node_name}: episode",
        message=f"{episodes.episode_id or 'none'} step {episodes.step}" if episodes.running else "between episodes",
        values={
            "episode_id": episodes.episode_id,
            "step": str(episodes.step),
            "running": str(episodes.running).lower(),
            "reset_requests": str(c["reset_requests"]),
            **{k: str(v) for k, v in episodes.counters.items()},
        },
    )
    return [control, policy, link_status, episode]
