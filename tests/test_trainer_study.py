"""o2o-trainer study: the tables' arithmetic on hand-made curves, the spec's refusals, the plan
(shared pretraining, what a rerun redoes), failures, a tiny study of real subprocesses that is
interrupted and continued, and SIGTERM."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from trainer_helpers import ENV_ID, write_reach_dataset

from trainer.cli import main
from trainer.study import (
    MARKER,
    Job,
    aggregate,
    binned_mean,
    load_spec,
    mark_done,
    markdown,
    plan,
    read_marker,
    run_jobs,
    seed_metrics,
)

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
TINY_PRETRAIN = {
    "steps": 20,
    "eval-every": 0,  # the dataset's env id is registered only where trainer_helpers is imported
    "ensemble-size": 2,
    "channels": 4,
    "strides": [2, 1],
    "feature-dim": 8,
    "hidden-dim": 32,
    "batch-size": 32,
}
TINY_FINETUNE = {
    "steps": 60,
    "eval-every": 30,
    "eval-episodes": 2,
    "warmup": 10,
    "batch-size": 16,
    "ratio-batch-size": 16,
    "log-every": 10,
}

# Seed 0 dips from 0.5 to 0.25 and ends at 1; seed 1 never drops below its 0.7 and has one
# more evaluation, which the mean curve leaves out.
SEED0 = [(0, 0.5), (100, 0.25), (200, 1.0)]
SEED1 = [(0, 0.7), (100, 0.9), (200, 0.8), (300, 1.0)]


def test_one_seeds_numbers():
    m = seed_metrics(SEED0)
    assert m["pretrained"] == 0.5 and m["lowest"] == 0.25 and m["final"] == 1.0
    assert m["worst_drop"] == pytest.approx(0.25)
    assert m["auc"] == pytest.approx(((0.5 + 0.25) / 2 * 100 + (0.25 + 1.0) / 2 * 100) / 200)
    rising = seed_metrics(list(reversed(SEED1)))  # the order of the points does not matter
    assert rising["worst_drop"] == 0.0 and rising["lowest"] == 0.8
    assert rising["auc"] == pytest.approx((80 + 85 + 90) / 300)
    only = seed_metrics([(0, 0.4)])
    assert (only["lowest"], only["worst_drop"], only["final"], only["auc"]) == (None, 0.0, 0.4, 0.4)


def test_seeds_aggregate_into_means_the_worst_seed_and_a_curve_over_common_steps():
    row = aggregate({0: SEED0, 1: SEED1})
    assert row["seeds"] == 2
    assert row["pretrained"] == pytest.approx(0.6)
    assert (row["worst_drop"], row["worst_drop_max"]) == (pytest.approx(0.125), 0.25)
    assert row["final"] == 1.0
    assert row["auc"] == pytest.approx((0.5 + 0.85) / 2)
    steps, means, stds = zip(*row["curve"])
    assert steps == (0, 100, 200)
    assert means == pytest.approx((0.6, 0.575, 0.9)) and stds == pytest.approx((0.1, 0.325, 0.1))
    assert row["steps_to_90"] == 200  # the mean reaches 0.9 at 200 (seed 1 alone reached it at 100)
    # Against each seed's own start: seed 0 -0.25 then +0.5, seed 1 +0.2 then +0.1.
    _, change, change_std = zip(*row["change_curve"])
    assert change == pytest.approx((0.0, -0.025, 0.3)) and change_std == pytest.approx((0.0, 0.225, 0.2))
    assert row["per_seed"][1] == {"pretrained": 0.7, "lowest": 0.8, "worst_drop": 0.0, "final": 1.0, "auc": 0.85}
    assert aggregate({0: [(0, 0.5), (50, 0.85)], 1: [(0, 0.5), (50, 0.95)]})["steps_to_90"] == 50
    assert aggregate({0: SEED0, 1: [(0, 0.1), (100, 0.2), (200, 0.3)]})["steps_to_90"] is None
    assert "offline_fraction" not in row


def test_offline_share_is_averaged_per_250_steps_then_over_seeds():
    steps = list(range(50, 601, 50))
    offline = {0: (steps, [0.5] * 5 + [1.0] * 7), 1: (steps[:-1], [0.7] * 11)}
    # Bins (0, 250], (250, 500], (500, 750]: seed 0 has 0.5, 1.0, 1.0; seed 1 0.7, 0.7, 0.7.
    assert binned_mean(offline) == [[250, 0.6], [500, 0.85], [600, 0.85]]
    assert aggregate({0: SEED0, 1: SEED1}, offline)["offline_fraction"] == binned_mean(offline)


def test_markdown_tables_show_every_seed_and_the_unfinished_ones():
    rows = {"baseline": aggregate({0: SEED0, 1: SEED1}), "slow": aggregate({0: [(0, 0.5), (100, 0.3), (200, 0.4)]})}
    study = {
        "name": "hand",
        "command": "o2o-trainer study s/spec.yaml --out s",
        "report_command": "o2o-trainer study --report s",
        "wall_seconds": 90.0,
        "runs": {"finished": 3, "total": 6},
        "tasks": {"reach": {"pretrained": 0.57, "variants": rows, "unfinished": {"slow": [1], "never": [0, 1]}}},
    }
    text = markdown(study)
    assert "3 of 6 fine-tuning runs finished; wall time 1.5 min." in text
    assert "`o2o-trainer study s/spec.yaml --out s`" in text and "`o2o-trainer study --report s`" in text
    lines = text.splitlines()
    assert "| baseline | 2 | 0.60 | 0.12 / 0.25 | 1.00 | 0.68 | 200 |" in lines
    assert "| slow | 1 | 0.50 | 0.20 / 0.20 | 0.40 | 0.38 | – |" in lines
    per_seed = lines[lines.index("| variant | seed | pretrained | lowest | final |") + 2 :]
    assert per_seed == [
        "| baseline | 0 | 0.50 | 0.25 | 1.00 |",
        "| baseline | 1 | 0.70 | 0.80 | 1.00 |",
        "| slow | 0 | 0.50 | 0.30 | 0.40 |",
        "| slow | 1 | not finished | | |",
        "| never | 0 | not finished | | |",
        "| never | 1 | not finished | | |",
    ]


def write_spec(path: Path, **spec) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def tiny_spec(**changes) -> dict:
    spec = {
        "name": "tiny",
        "tasks": {"reach": {"env": f"trainer_helpers:{ENV_ID}", "data": "data"}},
        "seeds": [0, 1],
        "pretrain": TINY_PRETRAIN,
        "finetune": TINY_FINETUNE,
        "variants": {"baseline": {}, "fast_actor": {"finetune": {"actor-lr": 1e-3}}},
    }
    return {**spec, **changes}


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"bogus": 1}, "unknown key 'bogus'"),
        ({"variants": {}}, "variants: the study has no variants"),
        ({"tasks": {}}, "tasks: the study has no tasks"),
        ({"seeds": []}, "seeds: expected a non-empty list, got []"),
        ({"seeds": ["0"]}, "seeds: '0' is not an integer"),
        ({"replay": ["greedy"]}, "replay: 'greedy' is not a replay mode"),
        ({"tasks": {"reach": {"data": "data"}}}, "task reach: `env` is required"),
        ({"finetune": {"out": "x"}}, "finetune: --out is set by the study"),
        ({"finetune": {"replay": "uniform"}}, "finetune: set replay with the top-level `replay`"),
        ({"variants": {"pretrain": {}}}, "'pretrain' names two rows or a directory"),
        ({"variants": {"x": {"finetune": {"nope": 1}}}}, "reach/x/seed0: unrecognized arguments: --nope 1"),
        ({"variants": {"x": {"finetune": {"replay": "greedy"}}}}, "argument --replay: invalid choice: 'greedy'"),
        ({"finetune": {"hidden-dim": 64}}, "reach/baseline/seed0: --hidden-dim: the network's shape comes from the"),
        ({"ensemble_sizes": [1, 3]}, "reach/baseline-N3/seed0: --ensemble-size 3, but reach/pretrain/base-seed0"),
    ],
)
def test_a_bad_spec_is_refused_in_one_line_before_anything_runs(tmp_path, capsys, changes, message):
    spec = write_spec(tmp_path / "spec.yaml", **tiny_spec(**changes))
    assert main(["study", str(spec), "--out", str(tmp_path / "study")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("o2o-trainer study: error:") and message in err[0], err
    assert not (tmp_path / "study").exists()


def test_study_needs_a_spec_and_out_or_a_study_to_report_on(tmp_path, capsys):
    assert main(["study", "--out", str(tmp_path)]) == 2
    assert "give a SPEC and --out DIR" in capsys.readouterr().err
    assert main(["study", "--report", str(tmp_path)]) == 2
    assert "no spec.yaml; not a study directory" in capsys.readouterr().err
    assert main(["study", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "s")]) == 2
    assert "cannot read the spec" in capsys.readouterr().err


def test_pretraining_is_shared_and_a_rerun_redoes_only_what_changed(tmp_path):
    spec_path = tmp_path / "spec.yaml"
    variants = {"baseline": {}, "lr": {"finetune": {"actor-lr": 1e-3}}, "calm": {"pretrain": {"cql-alpha": 1}}}
    write_spec(spec_path, **tiny_spec(variants=variants, ensemble_sizes=[1, 2], replay=["balanced", "uniform"]))
    jobs = plan(load_spec(spec_path), tmp_path / "s")
    labels = [job.label for job in jobs]
    assert [label for label in labels if "/pretrain/" in label] == [
        "reach/pretrain/base-seed0",
        "reach/pretrain/cql-alpha=1-seed0",
        "reach/pretrain/base-seed1",
        "reach/pretrain/cql-alpha=1-seed1",
    ]
    finetunes = [job for job in jobs if job.kind == "finetune"]
    assert len(finetunes) == 3 * 2 * 2 * 2 and finetunes[0].label == "reach/baseline-balanced-N1/seed0"
    first = finetunes[0]
    assert first.needs.label == "reach/pretrain/base-seed0" and flag(first, "init") == str(first.needs.run_dir)
    assert (flag(first, "ensemble-size"), flag(first, "replay"), flag(first, "threads")) == ("1", "balanced", "1")
    assert flag(jobs[0], "ensemble-size") == "2" and flag(jobs[1], "cql-alpha") == "1"  # the largest size

    # Every run finished as planned: all done. A changed fine-tune flag redoes that variant's
    # fine-tunes; a redone pretraining redoes the fine-tunes that start from it.
    for job in jobs:
        job.run_dir.mkdir(parents=True)
        after = read_marker(job.needs.run_dir)["finished"] if job.needs else None
        (job.run_dir / MARKER).write_text(json.dumps({"args": job.argv[1:], "after": after, "finished": 1.0}))
    mark_done(jobs)
    assert all(job.done for job in jobs)
    variants["lr"] = {"finetune": {"actor-lr": 3e-3}}
    write_spec(spec_path, **tiny_spec(variants=variants, ensemble_sizes=[1, 2], replay=["balanced", "uniform"]))
    again = plan(load_spec(spec_path), tmp_path / "s")
    (again[0].run_dir / MARKER).write_text(json.dumps({"args": again[0].argv[1:], "after": None, "finished": 2.0}))
    mark_done(again)
    redo = {job.label for job in again if not job.done}
    assert redo == {job.label for job in again if job.label.startswith("reach/lr-") or job.needs is again[0]}
    assert len(redo) == 8 + 8 - 4  # lr: 8 fine-tunes; from base-seed0: baseline's and lr's 4 each


def flag(job: Job, name: str) -> str:
    return job.argv[job.argv.index(f"--{name}") + 1]


def test_failed_runs_are_reported_and_what_does_not_need_them_still_runs(tmp_path, capsys):
    python = [sys.executable, "-c"]
    fails = Job("a/fails", "pretrain", tmp_path / "a", [*python, "print('the reason'); raise SystemExit(3)"])
    after = Job("a/after", "finetune", tmp_path / "b", [*python, "pass"], needs=fails)
    later = Job("a/later", "finetune", tmp_path / "c", [*python, "pass"], needs=after)
    fine = Job("b/fine", "pretrain", tmp_path / "d", [*python, "print('ok')"])
    finished = []
    failed, blocked = run_jobs([fails, after, later, fine], 2, lambda job, seconds: finished.append(job))
    assert (failed, blocked, finished) == ([fails], [after, later], [fine])
    out = capsys.readouterr().out
    assert "FAILED a/fails (exit status 3)" in out and "    the reason" in out
    assert read_marker(fine.run_dir)["args"] == fine.argv[1:]
    assert (fine.run_dir / "log.txt").read_text().endswith("ok\n")
    assert not (fails.run_dir / MARKER).exists() and not after.run_dir.exists()


def test_a_tiny_study_runs_shares_pretraining_and_continues_after_an_interruption(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the spec's data path is relative to the working directory
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
    write_reach_dataset(tmp_path / "data", scripted=2, random=2)
    spec = write_spec(tmp_path / "tiny.yaml", **tiny_spec())
    out = Path("study")
    assert main(["study", str(spec), "--out", str(out), "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    assert "ran 6, reused 0, failed 0, not run 0 of 6 runs" in printed
    assert re.search(r"reach/fast_actor/seed1: \d+ s, success \d\.\d\d -> \d\.\d\d", printed)
    assert sorted(p.name for p in (out / "runs" / "reach" / "pretrain").iterdir()) == ["base-seed0", "base-seed1"]
    assert (out / "spec.yaml").read_text() == spec.read_text()

    def check_results() -> dict:
        study = json.loads((out / "study.json").read_text())
        assert study["name"] == "tiny" and study["runs"] == {"finished": 4, "total": 4}
        assert study["command"] == "o2o-trainer study study/spec.yaml --out study"
        task = study["tasks"]["reach"]
        assert list(task["variants"]) == ["baseline", "fast_actor"] and task["unfinished"] == {}
        for row in task["variants"].values():
            assert row["seeds"] == 2 and sorted(row["per_seed"]) == ["0", "1"]
            assert row["curve"][0][0] == 0 and row["curve"][-1][0] == 60
            assert 0.0 <= row["auc"] <= 1.0 and row["offline_fraction"]
        text = (out / "study.md").read_text()
        assert text.count("| fast_actor | ") == 3 and "not finished" not in text  # one summary row, two seeds
        assert (out / "study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        return study

    check_results()
    # An interrupted run: no marker. A rerun deletes it and runs it again, and nothing else.
    interrupted = out / "runs" / "reach" / "fast_actor" / "seed1"
    (interrupted / MARKER).unlink()
    logs = {log: log.stat().st_mtime_ns for log in out.glob("runs/reach/**/log.txt") if interrupted not in log.parents}
    assert len(logs) == 5
    assert main(["study", str(spec), "--out", str(out), "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    assert "redoing reach/fast_actor/seed1 (unfinished: interrupted or failed)" in printed
    assert "ran 1, reused 5, failed 0, not run 0 of 6 runs" in printed
    assert {log: log.stat().st_mtime_ns for log in logs} == logs
    assert read_marker(interrupted)["wall_seconds"] > 0
    study = check_results()

    # --report rewrites the results from the run directories without running anything.
    for name in ("study.json", "study.md", "study.png"):
        (out / name).unlink()
    assert main(["study", "--report", str(out)]) == 0
    assert check_results()["tasks"] == study["tasks"]


def test_sigterm_stops_the_runs_and_exits_130(tmp_path):
    write_reach_dataset(tmp_path / "data", scripted=1, random=1)
    pretrain = {**TINY_PRETRAIN, "steps": 1_000_000}
    spec = write_spec(tmp_path / "spec.yaml", **tiny_spec(seeds=[0], pretrain=pretrain, variants={"baseline": {}}))
    out = tmp_path / "study"
    study = subprocess.Popen(
        [sys.executable, "-m", "trainer.cli", "study", str(spec), "--out", str(out)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    log = out / "runs" / "reach" / "pretrain" / "base-seed0" / "log.txt"
    deadline = time.monotonic() + 120
    while "pretrain:" not in (log.read_text() if log.is_file() else ""):  # its progress bar: it is training
        assert study.poll() is None and time.monotonic() < deadline, study.communicate()
        time.sleep(0.2)
    study.send_signal(signal.SIGTERM)
    _, err = study.communicate(timeout=60)
    assert study.returncode == 130, err
    assert "interrupted; run it again to continue" in err
    children = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline(p).count(str(out))]
    assert children == [] and not (log.parent / MARKER).exists()


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:  # the process ended meanwhile
        return ""
