"""Hardware-in-loop end to end: `sim_bridge` and `o2o-robot` (with config/sim_hil.yaml and a
small ONNX policy) as real subprocesses over DDS on loopback. The node asks for a reset, gets
ready, commands the arm, the simulated arm moves, and episodes end at the time limit and start
again; an operator on the same domain watches the topics and /diagnostics."""

import numpy as np
import pytest
from bridge_helpers import HOME, Operator, running, start, stop
from node_helpers import constant_model, dds_env, unique_domain_id, wait_until

from robot_node.spec import ObservationSpec
from sim.robot import STATE_JOINTS

pytestmark = pytest.mark.integration

# Forward and down with the gripper closed: 10 steps take the hand from (0.22, 0, 0.18) to about
# (0.37, 0, 0.03), inside the workspace box, so that the node's safety rules leave it alone.
ACTION = [0.5, 0.0, -0.5, 0.9]
STEPS = 10
COMMAND = [0.015, 0.0, -0.015, 0.9]  # ACTION in robot units (action_scale of config/sim_hil.yaml)


def test_policy_node_runs_episodes_on_the_simulated_arm(tmp_path, monkeypatch):
    model = tmp_path / "policy.onnx"
    model.write_bytes(constant_model(ACTION, obs=ObservationSpec((64, 64, 3), STATE_JOINTS)))
    domain = unique_domain_id()
    for key, value in dds_env(domain).items():
        monkeypatch.setenv(key, value)
    operator = Operator(domain)
    logs = tmp_path / "bridge.log", tmp_path / "node.log"
    bridge = start("sim_bridge", ["--adapter", "dds", "--speed", "5", "--seed", "20"], domain, logs[0])
    node_args = ["--adapter", "dds", "--params", "config/sim_hil.yaml", "-p", f"model_path:={model}", "-p", "explore:=false"]
    node_args += ["-p", f"max_episode_steps:={STEPS}", "-p", "reset_retry_s:=0.5", "-p", "diagnostics_rate_hz:=5.0"]
    node = start("o2o-robot", node_args, domain, logs[1])
    try:
        wait_until(lambda: running(bridge, node) and len(operator.readies) >= 3, 90, "three episodes to start")
        # One snapshot with both: an episode ends one bridge period (20 ms) before the next starts.
        episodes = wait_until(
            lambda: (s := operator.status(": episode")) and int(s.values["truncated"]) >= 2 and int(s.values["episodes"]) >= 3 and s,
            20, "three episodes, two ended, in /diagnostics",
        )
        control = wait_until(lambda: operator.status(": control"), 5, "control diagnostics")
    finally:
        operator.close()
        outputs = [stop(node), stop(bridge)]
    for process, output in zip((node, bridge), outputs):
        assert process.returncode == 0 and "Traceback" not in output, output

    # The node asked for every reset and the bridge answered each with ready.
    assert len(operator.resets) >= 3 and "scene reset with seed 22" in outputs[1]
    # It commanded in robot units; the node's safety rules passed the action through.
    assert any(np.allclose(c, COMMAND, atol=1e-6) for c in operator.commands)
    assert control.values["workspace"] == "0" and control.values["bad_joint_states"] == "0"
    # The arm went forward and down during each episode and came back home at each reset.
    x = np.array([p[0] for p in operator.ee])
    far, home = x > HOME[0] + 0.1, x < HOME[0] + 0.01
    returns = np.count_nonzero(far[:-1] & home[1:])
    assert returns >= 2, f"the hand went out and came home {returns} times"
    assert min(p[2] for p in operator.ee) < HOME[2] - 0.1
    # Episodes end at the time limit (truncated), never as terminal.
    assert episodes.values["terminal"] == "0"
