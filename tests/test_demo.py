"""`o2o-demo` end to end, small: collect, pretrain, then the deployed processes (o2o-trainer serve,
sim_bridge and o2o-robot over DDS on loopback, CURVE keys) fine-tune while the node hot-swaps the
pushed weights; the judgement and the plot at the end; a second run reuses every stage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from node_helpers import wait_until

from robot_node.dataset import open_dataset

pytestmark = [pytest.mark.slow, pytest.mark.integration]

DEMO = str(Path(sys.executable).with_name("o2o-demo"))
SMALL = ["--episodes", "8", "--pretrain-steps", "20", "--online-steps", "240", "--warmup", "40", "--push-every", "60", "--speed", "10", "--eval-episodes", "1"]


def run_demo(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([DEMO, "--out", str(out), *SMALL, *extra], capture_output=True, text=True, timeout=600)


def test_the_demo_fine_tunes_on_the_simulated_robot_and_reuses_finished_stages(tmp_path):
    out = tmp_path / "demo"
    first = run_demo(out)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "pretrained" in first.stdout and "fine-tuned on the robot" in first.stdout

    summary = json.loads((out / "finetune" / "summary.json").read_text())
    assert summary["transitions"] >= 240 and summary["last_version"] >= 3  # at least two pushes after v1
    robot_episodes = open_dataset(out / "finetune" / "storage" / "dataset")
    versions = set()
    for index in range(len(robot_episodes)):
        versions |= set(np.unique(robot_episodes.read(index).policy_versions).tolist())
    assert 1 in versions and max(versions) >= 2, versions  # the node acted with pushed weights, swapped in mid-run
    assert "policy v1 -> v2" in (out / "logs" / "robot_node.log").read_text()
    scores = json.loads((out / "evaluation.json").read_text())["success_rate"]
    assert set(scores) == {"pretrained", "finetuned"} and all(0.0 <= v <= 1.0 for v in scores.values())
    assert (out / "learning_curve.png").stat().st_size > 10_000

    again = run_demo(out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("reusing") == 3 and "[o2o-demo" not in again.stdout.replace("[o2o-demo] reusing", "")


def test_bad_settings_end_with_one_line():
    result = subprocess.run([DEMO, "--online-steps", "0"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith("o2o-demo: error: counts must be positive")


def children_of(pid: int) -> list[int]:
    """Processes whose parent is `pid`, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_sigterm_stops_the_demo_and_the_processes_it_started(tmp_path):
    out = tmp_path / "demo"
    endless = [*SMALL, "--online-steps", "100000"]  # argparse: the last value wins
    log = tmp_path / "demo.log"
    with open(log, "w") as sink:  # a file: a pipe nobody reads would fill up and stall the demo
        demo = subprocess.Popen([DEMO, "--out", str(out), *endless], stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: len(children_of(demo.pid)) == 3 and (out / "finetune" / "config.json").is_file(), 300, "trainer, bridge and node running")
        started = children_of(demo.pid)
        demo.terminate()
        demo.wait(timeout=120)
    finally:
        demo.kill()
    output = log.read_text()
    assert demo.returncode == 130 and "interrupted; run it again to continue" in output, output[-2000:]
    assert not [pid for pid in started if Path(f"/proc/{pid}").exists()]
