"""End to end on a small task: pretrain an ensemble offline, then fine-tune it online; the
fine-tuned policy must earn clearly more than the pretrained one did."""

import json

from trainer_helpers import ENV_ID, torch_single_thread, write_reach_dataset  # noqa: F401  (autouse)

from trainer.cli import main

SMALL = ["--ensemble-size", "2", "--channels", "8", "--strides", "2,1", "--feature-dim", "16", "--hidden-dim", "64"]
FAST = ["--batch-size", "64", "--actor-lr", "1e-3", "--critic-lr", "1e-3", "--alpha-lr", "1e-3"]


def test_pretraining_then_fine_tuning_improves_return(tmp_path):
    data = write_reach_dataset(tmp_path / "data", scripted=30, random=30, noise=0.5, seed=0)
    pre, fine = tmp_path / "pre", tmp_path / "fine"
    assert (
        main(
            ["pretrain", "--data", str(data), "--out", str(pre), "--steps", "200", *SMALL, *FAST]
        )
        == 0
    )
    args = ["--env", ENV_ID, "--init", str(pre), "--out", str(fine), "--steps", "1000", "--warmup", "200"]
    args += ["--eval-every", "500", "--eval-episodes", "30", "--ratio-batch-size", "64", "--ratio-hidden", "64"]
    assert main(["finetune-local", *args, *FAST]) == 0
    summary = json.loads((fine / "summary.json").read_text())
    before, after = summary["initial"]["eval/return"], summary["final"]["eval/return"]
    assert after >= before + 3.0, summary  # returns lie in [0, 20]; before is about 0.5, after about 15
    # Episodes end every 20 steps, so the 200th transition completes at env step 200 and
    # one update follows every step from there on.
    assert summary["replay"]["transitions"] == 1000 and summary["updates"] == 801
