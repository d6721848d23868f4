"""Policy runner: image preprocessing, the checks a model must pass (hot-swap refusals), and the
background loader that swaps models between ticks."""

import hashlib
import threading
from dataclasses import replace

import numpy as np
import pytest
import torch
from node_helpers import ACT, OBS, ConstantPolicy, ListLogger, constant_model, export_policy, wait_until, weights

from robot_node.hotswap import ModelSwapper
from robot_node.policy import ModelRejected, PolicyOutput, load_policy, load_policy_file
from robot_node.preprocess import ImageError, center_crop, check_image, to_policy_input
from robot_node.ros.messages import Image
from robot_node.spec import META_VERSION, ObservationSpec

# --- preprocessing --------------------------------------------------------------------------


def test_rgb8_at_model_size_passes_through_unchanged():
    pixels = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    out = to_policy_input(Image(64, 64, "rgb8", 192, pixels.tobytes()), (64, 64))
    assert out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, pixels)


def test_bgr8_is_converted_to_rgb():
    pixels = np.zeros((8, 8, 3), np.uint8)
    pixels[..., 0] = 200  # blue in BGR
    out = to_policy_input(Image(8, 8, "bgr8", 24, pixels.tobytes()), (8, 8))
    assert out[0, 0].tolist() == [0, 0, 200]


def test_row_padding_is_skipped():
    pixels = np.random.default_rng(2).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    padded = np.concatenate([pixels.reshape(6, 15), np.full((6, 5), 77, np.uint8)], axis=1)
    out = to_policy_input(Image(6, 5, "rgb8", 20, padded.tobytes()), (6, 5))
    np.testing.assert_array_equal(out, pixels)


def test_wide_image_is_centre_cropped_then_resized():
    # 4:3 camera, left and right quarters red, centre green: a square crop keeps only green.
    pixels = np.zeros((120, 160, 3), np.uint8)
    pixels[:, :20] = pixels[:, 140:] = (255, 0, 0)
    pixels[:, 20:140] = (0, 255, 0)
    out = to_policy_input(Image(120, 160, "rgb8", 480, pixels.tobytes()), (64, 64))
    assert out.shape == (64, 64, 3)
    assert np.all(out[..., 1] == 255) and np.all(out[..., 0] == 0)


def test_centre_crop_keeps_the_requested_aspect():
    assert center_crop(np.zeros((100, 300, 3)), 1.0).shape == (100, 100, 3)
    assert center_crop(np.zeros((300, 100, 3)), 2.0).shape == (50, 100, 3)


@pytest.mark.parametrize(
    "msg, problem",
    [
        (Image(4, 4, "mono8", 4, bytes(16)), "unsupported encoding"),
        (Image(4, 4, "rgb8", 8, bytes(64)), "step 8"),
        (Image(4, 4, "rgb8", 12, bytes(40)), "40 bytes"),
        (Image(0, 4, "rgb8", 12, b""), "empty image"),
    ],
)
def test_bad_images_are_refused_with_a_reason(msg, problem):
    with pytest.raises(ImageError, match=problem):
        check_image(msg)


# --- model checks ---------------------------------------------------------------------------


def test_a_conforming_model_loads_and_acts():
    runner = load_policy(weights(constant_model([0.1, -0.2, 0.3, 0.5], version=4), 4), OBS, ACT)
    out = runner.infer(np.zeros((64, 64, 3), np.uint8), np.zeros(2, np.float32))
    assert runner.version == 4 and runner.train_step == 0
    np.testing.assert_allclose(out.action, [0.1, -0.2, 0.3, 0.5], atol=1e-6)


def test_exploration_samples_the_squashed_gaussian_around_the_mean():
    out = PolicyOutput(np.array([0.0, 2.0], np.float32), np.array([np.log(0.5), -20.0], np.float32), np.tanh([0.0, 2.0]))
    samples = np.stack([out.sample(np.random.default_rng(i)) for i in range(2000)])
    assert np.all(np.abs(samples) < 1)
    assert abs(np.arctanh(samples[:, 0]).std() - 0.5) < 0.03  # pre-tanh std is exp(log_std)
    np.testing.assert_allclose(samples[:, 1], np.tanh(2.0), atol=1e-6)


def _state_free_model(**kwargs):
    return export_policy(ConstantPolicy([0.0] * 4), ObservationSpec((64, 64, 3)), ACT, **kwargs)


REFUSALS = {
    "bad sha256": (lambda: replace(weights(constant_model([0.0] * 4, version=2), 2), sha256="0" * 64), "sha256 mismatch"),
    "NaN output": (lambda: weights(constant_model([0.0] * 4, version=2, nan_above=0.0), 2), "not finite"),
    "renamed output": (
        lambda: weights(constant_model([0.0] * 4, version=2, output_names=("mu", "log_std", "action")), 2),
        "lacks outputs",
    ),
    "float image input": (
        lambda: weights(constant_model([0.0] * 4, version=2, image_dtype=torch.float32), 2),
        "tensor\\(float\\), expected tensor\\(uint8\\)",
    ),
    "missing state input": (
        lambda: weights(_state_free_model(version=2, metadata={"o2o.observation_spec": OBS.to_json()}), 2),
        "model inputs",
    ),
    "wrong image size": (
        lambda: weights(
            export_policy(ConstantPolicy([0.0] * 4), ObservationSpec((32, 32, 3), OBS.state_names), ACT, version=2,
                          metadata={"o2o.observation_spec": OBS.to_json()}), 2),
        "shape",
    ),
    "metadata spec differs": (
        lambda: weights(_state_free_model(version=2), 2),
        "metadata specs differ",
    ),
    "version mismatch": (lambda: weights(constant_model([0.0] * 4, version=3), 2), "envelope version 2"),
    "no version metadata": (
        lambda: weights(constant_model([0.0] * 4, metadata={META_VERSION: None}), 0),
        "lacks o2o.version",
    ),
    "not onnx": (lambda: weights(b"this is not a model", 2), "onnxruntime cannot load"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_bad_models_are_refused_with_a_reason(case):
    make, reason = REFUSALS[case]
    with pytest.raises(ModelRejected, match=reason):
        load_policy(make(), OBS, ACT)


def test_oversized_models_are_refused_before_loading():
    with pytest.raises(ModelRejected, match="over the"):
        load_policy(weights(constant_model([0.0] * 4, version=2), 2), OBS, ACT, max_bytes=100)


def test_envelope_specs_must_match_the_robot():
    offered = replace(weights(constant_model([0.0] * 4, version=2), 2), observation_spec=ObservationSpec((64, 64, 3)))
    with pytest.raises(ModelRejected, match="envelope's observation/action specs"):
        load_policy(offered, OBS, ACT)


def test_model_file_errors_name_the_problem(tmp_path):
    with pytest.raises(ModelRejected, match="cannot read model"):
        load_policy_file(tmp_path / "missing.onnx")
    path = tmp_path / "model.onnx"
    path.write_bytes(constant_model([0.2] * 4, version=7))
    runner = load_policy_file(path)
    assert runner.version == 7 and runner.observation_spec == OBS
    assert runner.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


# --- background loading ---------------------------------------------------------------------


def test_swapper_hands_over_a_checked_model_and_refuses_a_bad_one():
    logger = ListLogger()
    swapper = ModelSwapper(lambda w: load_policy(w, OBS, ACT), logger)
    swapper.offer(weights(constant_model([0.0] * 4, version=5, nan_above=0.0), 5))
    swapper.join(timeout=30)
    assert swapper.take_ready() is None and swapper.rejected == 1
    assert "v5" in swapper.last_rejection and "not finite" in swapper.last_rejection
    assert any("refused policy version 5" in line for line in logger.lines)
    swapper.offer(weights(constant_model([0.3] * 4, version=6), 6))
    runner = wait_until(swapper.take_ready, timeout=30, what="version 6 to pass its checks")
    assert runner.version == 6 and swapper.highest_offered == 6


def test_swapper_conflates_offers_made_while_it_is_busy():
    started, release = threading.Event(), threading.Event()
    loaded = []

    def slow_load(w):
        started.set()
        release.wait(10)
        loaded.append(w.version)
        return load_policy(w, OBS, ACT)

    swapper = ModelSwapper(slow_load, ListLogger())
    offers = [weights(constant_model([0.1] * 4, version=v), v) for v in range(1, 6)]
    swapper.offer(offers[0])
    assert started.wait(10)
    for offer in offers[1:]:
        swapper.offer(offer)
    release.set()
    swapper.join(timeout=30)
    assert loaded == [1, 5]  # the first was already loading; 2-4 were replaced by 5
    assert swapper.take_ready().version == 5
