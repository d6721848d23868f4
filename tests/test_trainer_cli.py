"""o2o-trainer as a user meets it: refusals of bad input, resumable runs, export and plots."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from trainer_helpers import ENV_ID, torch_single_thread, write_reach_dataset  # noqa: F401  (autouse)

from robot_node.dataset import DatasetError
from robot_node.policy import load_policy_file
from trainer.checkpoint import read_checkpoint
from trainer.cli import main
from trainer.config import FinetuneConfig, PretrainConfig
from trainer.metrics import read_metrics
from trainer.offline_data import load_offline

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "--ensemble-size",
    "2",
    "--channels",
    "4",
    "--strides",
    "2,1",
    "--feature-dim",
    "8",
    "--hidden-dim",
    "32",
    "--batch-size",
    "32",
]


def break_episode(root: Path, **arrays) -> None:
    """Rewrite episode 0 of a dataset with some arrays replaced."""
    path = root / "episodes" / "episode_000000.npz"
    with np.load(path) as data:
        content = {name: data[name] for name in data.files}
    content.update(arrays)
    np.savez_compressed(path, **content)


@pytest.fixture
def dataset(tmp_path) -> Path:
    return write_reach_dataset(tmp_path / "data", scripted=2, random=2)


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda root: break_episode(root, frames=np.zeros((21, 8, 8, 3), np.uint8)),
            r"frames: expected uint8\[21, 16, 16, 3\]",
        ),
        (lambda root: break_episode(root, rewards=np.full(20, np.nan, np.float32)), "rewards: contains NaN"),
        (lambda root: (root / "manifest.json").unlink(), "no manifest.json"),
    ],
    ids=["mismatched-shapes", "nan-rewards", "missing-manifest"],
)
def test_bad_datasets_are_refused_with_one_line_naming_the_problem(dataset, tmp_path, capsys, damage, message):
    damage(dataset)
    with pytest.raises(DatasetError, match=message):
        load_offline(dataset, progress=False)
    assert main(["pretrain", "--data", str(dataset), "--out", str(tmp_path / "run"), "--steps", "1", *SMALL]) == 2
    err = capsys.readouterr().err
    # A progress bar may have drawn and erased itself (carriage returns) before the error.
    lines = [line for line in re.split(r"[\r\n]", err) if line.strip()]
    assert lines[-1].startswith("o2o-trainer pretrain: error:") and re.search(message, lines[-1])
    assert "Traceback" not in err and sum(line.startswith("o2o-trainer") for line in lines) == 1
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_a_dataset_for_another_robot_is_refused(dataset):
    from robot_node.spec import ObservationSpec

    with pytest.raises(DatasetError, match="observation spec"):
        load_offline(
            dataset, observation_spec=ObservationSpec((64, 64, 3), ("x", "y", "goal_x", "goal_y")), progress=False
        )


def test_console_script_exits_2_with_one_line_and_no_traceback(tmp_path):
    script = Path(sys.executable).with_name("o2o-trainer")
    result = subprocess.run(
        [str(script), "pretrain", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"o2o-trainer pretrain: error: {tmp_path / 'nowhere'}: no such dataset directory"
    ]


def test_pretraining_resumes_from_its_checkpoint_and_refuses_to_overwrite(dataset, tmp_path, capsys):
    run = tmp_path / "run"
    args = [
        "pretrain",
        "--data",
        str(dataset),
        "--out",
        str(run),
        *SMALL,
        "--log-every",
        "5",
        "--checkpoint-every",
        "10",
    ]
    assert main([*args, "--steps", "10"]) == 0
    first = read_checkpoint(run)
    assert first["step"] == 10 and first["kind"] == "pretrain"
    _, store = load_offline(dataset, progress=False)  # states are normalised by the data's statistics
    states = torch.as_tensor(store.states[: store.num_frames])
    torch.testing.assert_close(first["agent"]["state_mean"], states.mean(0))
    torch.testing.assert_close(first["agent"]["state_std"], states.std(0, correction=0))
    config = json.loads((run / "config.json").read_text())
    assert config["network"]["ensemble_size"] == 2 and config["resolved"]["device"] == "cpu"
    assert main([*args, "--steps", "20"]) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert main([*args, "--steps", "20", "--resume"]) == 0
    second = read_checkpoint(run)
    assert second["step"] == 20
    assert not torch.equal(first["agent"]["critic.trunk.linear.weight"], second["agent"]["critic.trunk.linear.weight"])
    metrics = read_metrics(run)
    assert metrics["critic_loss"][0] == [5, 10, 15, 20]
    assert metrics["eval/success_rate"][0] == [10, 20]  # every run ends with an evaluation in the dataset's env
    assert main([*args, "--steps", "30", "--resume", "--hidden-dim", "64"]) == 2
    assert "network.hidden_dim cannot change when resuming" in capsys.readouterr().err


def test_a_resumed_run_keeps_its_settings_unless_flags_override_them(dataset, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["pretrain", "--data", str(dataset), "--out", str(run), "--eval-every", "0"]
    flags = [*SMALL, "--preset", "cpu", "--bc-steps", "5", "--n-step", "2", "--gamma", "0.9"]
    assert main([*args, *flags, "--steps", "4"]) == 0
    assert main([*args, "--resume", "--steps", "8", "--batch-size", "16"]) == 0  # no shape flags needed
    resumed = json.loads((run / "config.json").read_text())
    assert (resumed["preset"], resumed["bc_steps"], resumed["sac"]["n_step"], resumed["sac"]["gamma"]) == ("cpu", 5, 2, 0.9)
    assert (resumed["steps"], resumed["batch_size"], resumed["network"]["hidden_dim"]) == (8, 16, 32)
    assert read_checkpoint(run)["step"] == 8
    assert main([*args, "--resume", "--steps", "9", "--actor-lr", "1e-3"]) == 2
    assert "sac.actor_lr cannot change when resuming" in capsys.readouterr().err
    assert main([*args, "--resume", "--steps", "9", "--preset", "paper"]) == 2
    assert "a resumed run keeps those in its config.json" in capsys.readouterr().err


def test_pretraining_evaluates_in_the_datasets_env_or_says_how_to_do_without(dataset, tmp_path, capsys):
    manifest = dataset / "manifest.json"
    manifest.write_text(manifest.read_text().replace(ENV_ID, "o2o_test/Gone-v0"))
    args = ["pretrain", "--data", str(dataset), "--steps", "2", *SMALL]
    assert main([*args, "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "evaluation env o2o_test/Gone-v0 of the dataset (--eval-every 0 pretrains without one)" in err
    assert main([*args, "--out", str(tmp_path / "b"), "--eval-every", "0"]) == 0
    assert "eval/success_rate" not in read_metrics(tmp_path / "b")


def test_finetune_takes_a_subset_of_members_and_refuses_to_reshape_them(dataset, tmp_path, capsys):
    pre = tmp_path / "pre"
    assert main(["pretrain", "--data", str(dataset), "--out", str(pre), "--steps", "2", *SMALL]) == 0
    common = [
        "finetune-local",
        "--env",
        ENV_ID,
        "--init",
        str(pre),
        "--steps",
        "25",
        "--warmup",
        "10",
        "--batch-size",
        "16",
    ]
    common += ["--eval-episodes", "1", "--ratio-batch-size", "16"]
    assert main([*common, "--out", str(tmp_path / "bad"), "--hidden-dim", "64"]) == 2
    assert "--hidden-dim: the network's shape comes from --init" in capsys.readouterr().err
    run = tmp_path / "one"
    assert main([*common, "--out", str(run), "--ensemble-size", "1"]) == 0
    payload = read_checkpoint(run)
    assert payload["kind"] == "finetune" and payload["network"]["ensemble_size"] == 1 and payload["step"] == 15
    config = json.loads((run / "config.json").read_text())
    assert config["resolved"]["freeze_encoder_online"] is True and config["resolved"]["dataset"] == str(
        dataset.resolve()
    )
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((run / "summary.json").read_text())
    # 25 steps: one 20-step episode, then 5 steps whose last still waits for its next frame.
    assert summary["replay"]["transitions"] == 24 and summary["rejected"] == {}


def test_export_and_plot_from_run_directories(dataset, tmp_path, capsys):
    run = tmp_path / "pre"
    assert (
        main(["pretrain", "--data", str(dataset), "--out", str(run), "--steps", "4", "--log-every", "2", *SMALL]) == 0
    )
    onnx_path = tmp_path / "policy.onnx"
    assert main(["export", str(run), "--out", str(onnx_path), "--version", "5"]) == 0
    runner = load_policy_file(onnx_path)  # what the robot node starts with
    assert (runner.version, runner.train_step, runner.ensemble_size) == (5, 4, 2)
    assert not Path(str(onnx_path) + ".data").exists()  # weights inside the one file
    png = tmp_path / "curves.png"
    assert main(["plot", str(run), str(run), "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["export", str(tmp_path / "nothing"), "--out", str(onnx_path)]) == 2
    assert "not a trainer run directory" in capsys.readouterr().err


def test_unavailable_or_unknown_devices_are_user_errors(dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["pretrain", "--data", str(dataset), "--out", str(tmp_path / "r"), "--device", "cuda", *SMALL]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert main(["pretrain", "--data", str(dataset), "--out", str(tmp_path / "r"), "--device", "gpu0", *SMALL]) == 2
    assert "not a device" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--env", "o2o_test/Nope-v0"], "--env o2o_test/Nope-v0:"),
        (["--env", ENV_ID, "--env-kwargs", "[1]"], "--env-kwargs: must be a JSON object"),
        (["--env", ENV_ID, "--env-kwargs", '{"size": 3}'], "unexpected keyword argument"),
        (["--env", ENV_ID, "--replay", "uniform", "--strides", "2,1"], "needs offline data"),
        (["--env", ENV_ID, "--replay", "online_only"], "a 16x16 image is too small for --strides (2, 2, 1, 1)"),
    ],
)
def test_finetune_refuses_bad_environments_and_missing_data(tmp_path, capsys, flags, message):
    assert main(["finetune-local", *flags, "--out", str(tmp_path / "run"), "--steps", "1"]) == 2
    assert message in capsys.readouterr().err


def _parsed(cls, flags: list[str]):
    from trainer.cli import build_parser
    from trainer.config import config_from_args

    command = "pretrain" if cls is PretrainConfig else "finetune-local"
    return config_from_args(cls, build_parser().parse_args([command, *flags]))[0]


def test_one_nested_flag_keeps_the_commands_other_nested_defaults():
    # Pretraining's SACConfig differs from the class's own defaults (no entropy in the backup,
    # actor lr 1e-4); setting gamma must not put them back.
    config = _parsed(PretrainConfig, ["--gamma", "0.9"])
    assert config.sac.gamma == 0.9
    assert config.sac.backup_entropy is False and config.sac.actor_lr == PretrainConfig().sac.actor_lr


def test_presets_are_defaults_that_flags_override(dataset, tmp_path):
    paper, cpu = _parsed(PretrainConfig, []), _parsed(PretrainConfig, ["--preset", "cpu"])
    assert (paper.network.ensemble_size, paper.member_batches, paper.sac.n_step) == (5, "independent", 1)
    assert (cpu.network.ensemble_size, cpu.member_batches, cpu.sac.n_step, cpu.bc_steps) == (2, "shared", 3, 2000)
    tuned = _parsed(PretrainConfig, ["--preset", "cpu", "--ensemble-size", "3", "--n-step", "1"])
    assert (tuned.network.ensemble_size, tuned.network.hidden_dim, tuned.sac.n_step) == (3, 128, 1)
    assert _parsed(FinetuneConfig, ["--preset", "cpu"]).learner.batch_size == 128

    run = tmp_path / "run"
    flags = ["--preset", "cpu", "--steps", "2", "--bc-steps", "1", "--eval-every", "0", *SMALL]
    assert main(["pretrain", "--data", str(dataset), "--out", str(run), *flags]) == 0
    written = json.loads((run / "config.json").read_text())
    assert (written["preset"], written["bc_steps"], written["sac"]["n_step"]) == ("cpu", 1, 3)
