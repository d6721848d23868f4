"""The exported ONNX graph is the robot's contract and computes what the trainer computes."""

import hashlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from trainer_helpers import torch_single_thread  # noqa: F401  (autouse)

from robot_node import spec as contract
from robot_node.spec import ActionSpec, ObservationSpec
from trainer.agent import EnsembleAgent
from trainer.export import export_onnx, weights_sha256
from trainer.networks import NetworkConfig

NET = NetworkConfig(ensemble_size=3, channels=8, strides=(2, 2, 1, 1), feature_dim=16, hidden_dim=32)


def session(model: bytes) -> ort.InferenceSession:
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def exported() -> tuple[EnsembleAgent, bytes]:
    torch.manual_seed(0)
    agent = EnsembleAgent(ObservationSpec((32, 32, 3), ("j0", "j1", "gripper")), ActionSpec(), NET)
    with torch.no_grad():  # spread the members apart so the mixture is not trivial
        for p in agent.actor.parameters():
            p.mul_(3.0)
    states = np.random.default_rng(0).normal([0.1, -2.0, 0.03], [0.3, 1.5, 0.01], (100, 3))
    agent.normalise_states_like(states.astype(np.float32))  # the graph normalises as the trainer does
    return agent, export_onnx(agent, version=7, train_step=1234)


def test_inputs_outputs_and_metadata_follow_the_policy_contract(exported):
    agent, model = exported
    sess = session(model)
    inputs = {i.name: i for i in sess.get_inputs()}
    assert list(inputs) == [contract.MODEL_INPUT_IMAGE, contract.MODEL_INPUT_STATE]
    assert inputs["image"].type == "tensor(uint8)" and inputs["image"].shape[1:] == [32, 32, 3]
    assert inputs["state"].type == "tensor(float)" and inputs["state"].shape[1:] == [3]
    assert isinstance(inputs["image"].shape[0], str)  # dynamic batch
    outputs = [o.name for o in sess.get_outputs()]
    assert outputs == [contract.MODEL_OUTPUT_MEAN, contract.MODEL_OUTPUT_LOG_STD, contract.MODEL_OUTPUT_ACTION]
    meta = sess.get_modelmeta().custom_metadata_map
    assert meta[contract.META_VERSION] == "7" and meta[contract.META_TRAIN_STEP] == "1234"
    assert ObservationSpec.from_json(meta[contract.META_OBSERVATION_SPEC]) == agent.observation_spec
    assert ActionSpec.from_json(meta[contract.META_ACTION_SPEC]) == agent.action_spec
    assert meta[contract.META_ENSEMBLE_SIZE] == "3"
    assert meta[contract.META_WEIGHTS_SHA256] == weights_sha256(onnx.load_from_string(model))


@pytest.mark.parametrize("batch", [1, 5])
def test_onnxruntime_agrees_with_torch_within_1e_4(exported, batch):
    agent, model = exported
    rng = np.random.default_rng(batch)
    image = rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
    state = rng.standard_normal((batch, 3)).astype(np.float32)
    mean, log_std, action = session(model).run(None, {"image": image, "state": state})
    with torch.no_grad():
        expected_mean, expected_log_std = agent.mixture(torch.as_tensor(image), torch.as_tensor(state))
    np.testing.assert_allclose(mean, expected_mean.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(log_std, expected_log_std.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(action, np.tanh(expected_mean.numpy()), atol=1e-4, rtol=0)
    # The graph combines all members: one member alone gives a different answer.
    with torch.no_grad():
        member_mean = agent.policy(
            agent.features(torch.as_tensor(image).unsqueeze(0)), torch.as_tensor(state).unsqueeze(0)
        )[0][0]
    assert np.abs(member_mean.numpy() - mean).max() > 1e-3
    assert agent.act(image[0], state[0], deterministic=True) == pytest.approx(action[0], abs=1e-4)


def test_weights_hash_follows_the_weights_not_the_metadata(exported):
    agent, model = exported
    again = export_onnx(agent, version=8, train_step=99)
    meta = lambda m: dict(session(m).get_modelmeta().custom_metadata_map)  # noqa: E731
    assert meta(again)[contract.META_WEIGHTS_SHA256] == meta(model)[contract.META_WEIGHTS_SHA256]
    assert hashlib.sha256(again).hexdigest() != hashlib.sha256(model).hexdigest()
    with torch.no_grad():
        agent.actor.head.layers[-1].bias.add_(0.1)
    changed = export_onnx(agent, version=8, train_step=99)
    assert meta(changed)[contract.META_WEIGHTS_SHA256] != meta(model)[contract.META_WEIGHTS_SHA256]


@pytest.mark.parametrize(
    "state_names, use_state, inputs", [((), True, ["image"]), (("a", "b"), False, ["image", "state"])]
)
def test_graph_inputs_follow_the_spec_even_when_the_agent_ignores_state(state_names, use_state, inputs):
    net = NetworkConfig(ensemble_size=2, channels=4, strides=(2, 1), feature_dim=8, hidden_dim=16, use_state=use_state)
    agent = EnsembleAgent(ObservationSpec((16, 16, 3), state_names), ActionSpec(names=("dx", "dy")), net)
    sess = session(export_onnx(agent, version=1, train_step=0))
    assert [i.name for i in sess.get_inputs()] == inputs
    feed = {"image": np.zeros((3, 16, 16, 3), np.uint8), "state": np.ones((3, len(state_names)), np.float32)}
    mean, log_std, action = sess.run(None, {name: feed[name] for name in inputs})
    assert mean.shape == (3, 2) and np.isfinite(log_std).all() and np.abs(action).max() < 1
