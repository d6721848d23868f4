"""The trainer against the real simulator: a dataset from `o2o-sim collect`, pretraining,
fine-tuning on o2o_rl/PickPlace-v0 with pixels, and a model the robot node accepts."""

import json
import subprocess
import sys
from pathlib import Path

from trainer_helpers import torch_single_thread  # noqa: F401  (autouse)

from robot_node.policy import load_policy_file
from trainer.cli import main

SMALL = ["--ensemble-size", "2", "--channels", "8", "--feature-dim", "16", "--hidden-dim", "32", "--batch-size", "16"]


def test_collect_pretrain_finetune_export_on_pick_place(tmp_path):
    data = tmp_path / "data"
    collect = [str(Path(sys.executable).with_name("o2o-sim")), "collect", "--task", "pick_place", "--episodes", "6"]
    subprocess.run([*collect, "--seed", "0", "--out", str(data)], check=True, capture_output=True, timeout=300)
    pre, fine = tmp_path / "pre", tmp_path / "fine"
    assert main(["pretrain", "--data", str(data), "--out", str(pre), "--steps", "3", *SMALL]) == 0
    args = ["--env", "o2o_rl/PickPlace-v0", "--init", str(pre), "--out", str(fine), "--steps", "80", "--warmup", "40"]
    assert main(["finetune-local", *args, "--eval-episodes", "1", "--ratio-batch-size", "16", *SMALL[-2:]]) == 0
    summary = json.loads((fine / "summary.json").read_text())
    assert summary["updates"] == 41 and summary["replay"]["transitions"] == 80 and summary["rejected"] == {}
    config = json.loads((fine / "config.json").read_text())
    assert config["resolved"]["dataset"] == str(data.resolve()) and config["resolved"]["freeze_encoder_online"]
    assert main(["export", str(fine), "--out", str(tmp_path / "policy.onnx")]) == 0
    runner = load_policy_file(tmp_path / "policy.onnx")
    assert runner.observation_spec.image_shape == (64, 64, 3) and runner.observation_spec.state_dim == 6
