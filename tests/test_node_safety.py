"""Safety limits, one rule at a time: clip, rate limit, workspace box, NaN/inf -> hold, hold
semantics, scaling to robot units, and the configuration they refuse."""

import numpy as np
import pytest

from robot_node.params import ConfigError, NodeParams
from robot_node.safety import CLIPPED, NONFINITE, RATE_LIMITED, WORKSPACE, SafetyFilter, SafetyLimits
from robot_node.spec import ActionSpec

ACT = ActionSpec()  # dx, dy, dz, gripper


def make_filter(**overrides):
    params = NodeParams(model_path="policy.onnx", **{"max_action_change": [2.0], **overrides})
    return SafetyFilter(SafetyLimits.from_params(params, ACT), ACT)


def test_in_range_action_passes_unchanged():
    action, events = make_filter().apply(np.array([0.1, -0.2, 0.3, 0.4]), None)
    np.testing.assert_allclose(action, [0.1, -0.2, 0.3, 0.4], atol=1e-7)
    assert events == []


def test_per_dimension_clip():
    safety = make_filter(action_min=[-0.5, -0.5, -0.1, -1.0], action_max=[0.5, 0.5, 0.1, 1.0])
    action, events = safety.apply(np.array([0.9, -0.9, 0.3, 0.9]), None)
    np.testing.assert_allclose(action, [0.5, -0.5, 0.1, 0.9], atol=1e-7)
    assert events == [CLIPPED]


def test_rate_limit_bounds_the_change_per_tick():
    safety = make_filter(max_action_change=[0.25])
    first, events = safety.apply(np.array([0.0, 0.0, 0.0, 0.0]), None)
    assert events == []  # nothing sent before: nothing to limit against
    second, events = safety.apply(np.array([1.0, -1.0, 0.1, 0.0]), None)
    np.testing.assert_allclose(second, [0.25, -0.25, 0.1, 0.0], atol=1e-7)
    assert events == [RATE_LIMITED]
    third, _ = safety.apply(np.array([1.0, -1.0, 0.1, 0.0]), None)
    np.testing.assert_allclose(third, [0.5, -0.5, 0.1, 0.0], atol=1e-7)


def test_after_forget_hold_sends_nothing_and_the_next_action_is_not_rate_limited():
    safety = make_filter(max_action_change=[0.25])
    safety.apply(np.array([0.0, 0.0, 0.0, 0.0]), None)
    safety.apply(np.array([0.0, 0.0, 0.0, 0.25]), None)  # the gripper closing
    safety.forget()  # the scene was reset: the gripper the node last sent is gone
    assert safety.hold() is None
    action, events = safety.apply(np.array([0.0, 0.0, 0.0, -1.0]), None)
    np.testing.assert_allclose(action, [0.0, 0.0, 0.0, -1.0], atol=1e-7)
    assert events == []


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_output_holds(bad):
    safety = make_filter()
    safety.apply(np.array([0.4, 0.4, 0.4, 0.8]), None)
    action, events = safety.apply(np.array([0.1, bad, 0.1, 0.1]), None)
    assert events == [NONFINITE]
    np.testing.assert_allclose(action, [0.0, 0.0, 0.0, 0.8], atol=1e-7)  # motion stops, the grip is kept


def test_non_finite_before_any_command_sends_nothing():
    action, events = make_filter().apply(np.array([np.nan] * 4), None)
    assert action is None and events == [NONFINITE]


def test_hold_keeps_listed_dimensions_and_zeroes_the_rest_without_rate_limit():
    safety = make_filter(max_action_change=[0.1], hold_last_dims=["gripper", "dz"])
    assert safety.hold() is None  # never commanded: nothing to hold
    safety.apply(np.array([0.05, 0.05, 0.05, 0.05]), None)
    safety.apply(np.array([0.15, 0.15, 0.15, 0.15]), None)
    np.testing.assert_allclose(safety.hold(), [0.0, 0.0, 0.15, 0.15], atol=1e-7)
    # After a hold, motion ramps up again from the held action.
    action, _ = safety.apply(np.array([1.0, 1.0, 1.0, 1.0]), None)
    np.testing.assert_allclose(action, [0.1, 0.1, 0.25, 0.25], atol=1e-7)


def test_commands_are_scaled_to_robot_units():
    safety = make_filter(action_scale=[0.02, 0.02, 0.01, 40.0], action_offset=[0.0, 0.0, 0.0, 40.0])
    assert safety.command(np.array([0.5, -1.0, 1.0, -1.0])) == pytest.approx([0.01, -0.02, 0.01, 0.0])


WORKSPACE_PARAMS = dict(
    workspace_enabled=True, workspace_min=[-0.5, -0.5, 0.0], workspace_max=[0.5, 0.5, 0.4],
    action_scale=[0.1, 0.1, 0.1, 1.0],
)


def test_workspace_box_cuts_motion_at_the_boundary():
    safety = make_filter(**WORKSPACE_PARAMS)
    # At x = 0.45 a full +x step (0.1 m) would reach 0.55: cut to 0.05 m, i.e. action 0.5.
    action, events = safety.apply(np.array([1.0, -1.0, 0.2, 1.0]), np.array([0.45, 0.0, 0.2]))
    np.testing.assert_allclose(action, [0.5, -1.0, 0.2, 1.0], atol=1e-6)
    assert events == [WORKSPACE]


def test_workspace_box_lets_an_outside_effector_move_back_in_only():
    safety = make_filter(**WORKSPACE_PARAMS)
    outside = np.array([0.7, 0.0, -0.1])  # beyond +x and below the table
    action, _ = safety.apply(np.array([0.5, 0.0, -0.5, 0.0]), outside)
    np.testing.assert_allclose(action[[0, 2]], [0.0, 0.0], atol=1e-7)  # no further out
    action, _ = safety.apply(np.array([-0.5, 0.0, 0.5, 0.0]), outside)
    np.testing.assert_allclose(action[[0, 2]], [-0.5, 0.5], atol=1e-6)  # back in is fine


def test_workspace_box_is_skipped_without_an_effector_position():
    action, events = make_filter(**WORKSPACE_PARAMS).apply(np.array([1.0, 1.0, 1.0, 0.0]), None)
    np.testing.assert_allclose(action, [1.0, 1.0, 1.0, 0.0])
    assert events == []


@pytest.mark.parametrize(
    "overrides, problem",
    [
        (dict(action_scale=[1.0, 2.0]), "action_scale has 2 values"),
        (dict(action_min=[-2.0]), "inside the action spec bounds"),
        (dict(action_min=[0.5], action_max=[0.4]), "must be ordered"),
        (dict(max_action_change=[0.0]), "max_action_change must be positive"),
        (dict(action_scale=[0.0]), "non-zero"),
        (dict(hold_last_dims=["wrist"]), "hold_last_dims names \\['wrist'\\]"),
        (dict(workspace_enabled=True, workspace_axes=["dx", "dy", "yaw"]), "workspace_axes"),
        (dict(action_offset=[float("nan")]), "must be finite"),
    ],
)
def test_unusable_safety_parameters_are_refused(overrides, problem):
    params = NodeParams(model_path="policy.onnx", **overrides)
    with pytest.raises(ConfigError, match=problem):
        SafetyLimits.from_params(params, ACT)


def test_empty_hold_list_holds_nothing():
    safety = make_filter(hold_last_dims=[""])
    safety.apply(np.array([0.3, 0.3, 0.3, 0.3]), None)
    np.testing.assert_allclose(safety.hold(), [0.0] * 4)
