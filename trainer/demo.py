"""`o2o-demo`: the simulated hardware-in-loop fine-tuning demo, end to end, on one machine.

    collect (sim) -> pretrain (CQL ensemble) -> export v1 ----------------------------+
                                                                                      v
    sim_bridge  <-- ROS 2 topics (DDS, loopback) -->  o2o-robot  <-- ZeroMQ, CURVE -->  o2o-trainer serve
    (MuJoCo arm)   camera, joints, reward, command    (ONNX policy,   transitions ->    (balanced replay,
                                                       hot swap)      <- weights v2, v3  fine-tuning)

The offline part runs in this process; the deployed part runs as the three processes a team
would run (robot node and simulator "on the robot", the trainer service on a workstation),
with CURVE keys made as the README tells an operator to. It ends with the pretrained and the
fine-tuned ensembles judged on the same fixed-seed episodes, and a learning-curve PNG.

Stages whose output is already in --out with the same settings are reused, so an interrupted
demo continues where it stopped. This is the one module that knows all three packages (the
import rules in DESIGN.md): it imports `trainer` and `sim`, and starts the robot node and the
bridge as commands.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from robot_node.dataset import DatasetError, open_dataset
from robot_node.keys import generate
from sim.collect import CollectConfig, collect, summary
from trainer.checkpoint import RunError, agent_from_checkpoint, read_checkpoint
from trainer.config import PRESETS, PretrainConfig
from trainer.evaluate import EVAL_SEED_OFFSET, evaluate, make_env
from trainer.export import export_onnx
from trainer.metrics import read_metrics
from trainer.run import set_threads

PROG = "o2o-demo"
ROBOT_ID = "sim"
ENV_ID = "o2o_rl/PickPlace-v0"
HIL_SEED = 500_000  # the bridge's episodes use seeds of their own: neither the dataset's nor the evaluation's
CONFIG = Path(__file__).resolve().parents[1] / "config" / "sim_hil.yaml"
# The demo's DDS traffic stays on this machine: loopback only, unicast discovery.
CYCLONE_LOOPBACK = """<CycloneDDS><Domain Id="any">
  <General><Interfaces><NetworkInterface name="lo"/></Interfaces><AllowMulticast>false</AllowMulticast></General>
  <Discovery><Peers><Peer address="127.0.0.1"/></Peers><ParticipantIndex>auto</ParticipantIndex>
    <MaxAutoParticipantIndex>20</MaxAutoParticipantIndex></Discovery>
</Domain></CycloneDDS>"""
STALL_S = 180.0  # no robot episode reaching the trainer for this long ends the demo with the logs


class DemoError(Exception):
    """A stage failed; the message says which and where its log is."""


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    out: Path
    episodes: int = 500  # offline dataset: scripted attempts and 30 % random rollouts
    pretrain_steps: int = 5_000
    online_steps: int = 4_000  # robot transitions the trainer fine-tunes on
    push_every: int = 250  # updates between weight pushes: an export costs 1-3 s of the learner's time
    warmup: int = 0  # robot transitions before the first update; 0: the cpu preset's
    speed: float = 1.5  # simulated seconds per wall-clock second: about what the learner keeps up with on 2 cores
    eval_episodes: int = 50  # a standard error near 0.07: 20 episodes (0.11) hide a dip
    seed: int = 0
    domain_id: int = 0  # 0: derived from the process id


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupted)  # as Ctrl-C: the deployed processes are stopped too
    started = time.monotonic()
    try:
        data = stage_data(config)
        pretrained = stage_pretrain(config, data)
        finetuned = stage_finetune(config, pretrained)
        scores = stage_evaluate(config, pretrained, finetuned)
        figure = plot(config, finetuned, scores)
    except (DemoError, RunError, DatasetError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; run it again to continue from the last finished stage", file=sys.stderr)
        return 130
    served = json.loads((finetuned / "summary.json").read_text())
    print(
        f"\n{PROG}: done in {(time.monotonic() - started) / 60:.0f} min.\n"
        f"  deterministic success on {config.eval_episodes} fixed episodes: pretrained {scores['pretrained']:.2f} -> "
        f"fine-tuned on the robot {scores['finetuned']:.2f}\n"
        f"  robot episodes: {served['episodes']}, weights pushed up to v{served['last_version']}\n"
        f"  learning curve: {figure}"
    )
    return 0


def parse_args(argv: list[str] | None) -> DemoConfig:
    d = DemoConfig(out=Path("runs/demo"))
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=d.out, help=f"directory for every stage's output (default {d.out})")
    parser.add_argument("--episodes", type=int, default=d.episodes, help=f"offline dataset size (default {d.episodes})")
    parser.add_argument("--pretrain-steps", type=int, default=d.pretrain_steps, help=f"offline gradient steps (default {d.pretrain_steps})")
    parser.add_argument("--online-steps", type=int, default=d.online_steps, help=f"robot transitions to fine-tune on (default {d.online_steps})")
    parser.add_argument("--push-every", type=int, default=d.push_every, help=f"updates between weight pushes (default {d.push_every})")
    parser.add_argument("--warmup", type=int, default=d.warmup, help="robot transitions before fine-tuning starts (default: the cpu preset's)")
    parser.add_argument("--speed", type=float, default=d.speed, help=f"simulated seconds per wall-clock second (default {d.speed:g})")
    parser.add_argument("--eval-episodes", type=int, default=d.eval_episodes, help=f"fixed-seed episodes per judgement (default {d.eval_episodes})")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--domain-id", type=int, default=d.domain_id, help="ROS_DOMAIN_ID of the robot's topics (default: from the process id)")
    config = DemoConfig(**vars(parser.parse_args(argv)))
    if min(config.episodes, config.pretrain_steps, config.online_steps, config.push_every, config.eval_episodes) < 1 or config.speed <= 0 or config.warmup < 0:
        parser.error("counts must be positive, --warmup 0 or more and --speed above 0")
    return dataclasses.replace(config, domain_id=config.domain_id or 1 + os.getpid() % 200)


# ---------------------------------------------------------------------------------- stages


def stage_data(config: DemoConfig) -> Path:
    root = config.out / "data"
    settings = {"episodes": config.episodes, "random_fraction": 0.3, "seed": config.seed}
    if reusable(root, settings):
        return root
    announce(1, f"collecting {config.episodes} PickPlace episodes in the simulator (scripted attempts, 30 % random)")
    shutil.rmtree(root, ignore_errors=True)
    print(summary(collect(root, CollectConfig(task="pick_place", episodes=config.episodes, random_fraction=0.3, seed=config.seed))))
    mark_done(root, settings)
    return root


def stage_pretrain(config: DemoConfig, data: Path) -> Path:
    run = config.out / "pretrain"
    settings = {"steps": config.pretrain_steps, "seed": config.seed, "after": finished(data)}
    if reusable(run, settings):
        return run
    announce(2, f"pretraining the CQL ensemble offline ({config.pretrain_steps} steps, preset cpu)")
    from trainer.pretrain import pretrain

    shutil.rmtree(run, ignore_errors=True)
    preset = PRESETS[PretrainConfig]["cpu"]
    pretrain(dataclasses.replace(preset, data=str(data), out=str(run), steps=config.pretrain_steps, seed=config.seed, threads=1, eval_every=0))
    (run / "policy_v1.onnx").write_bytes(export_onnx(agent_from_checkpoint(read_checkpoint(run)), version=1, train_step=config.pretrain_steps))
    mark_done(run, settings)
    return run


def stage_finetune(config: DemoConfig, pretrained: Path) -> Path:
    run = config.out / "finetune"
    settings = {
        "online_steps": config.online_steps, "push_every": config.push_every, "warmup": config.warmup,
        "speed": config.speed, "seed": config.seed, "after": finished(pretrained),
    }
    if reusable(run, settings):
        return run
    announce(3, f"fine-tuning on the simulated robot: {config.online_steps} transitions at {config.speed:g}x real time")
    for leftover in (run, config.out / "spool", config.out / "keys"):
        shutil.rmtree(leftover, ignore_errors=True)
    keys, logs = make_keys(config.out / "keys"), config.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    serve = [
        "o2o-trainer", "serve", "--init", str(pretrained), "--out", str(run), "--preset", "cpu", "--threads", "1",
        "--steps", str(config.online_steps), "--push-every", str(config.push_every), "--seed", str(config.seed),
        "--bind", "tcp://127.0.0.1:0", "--key", str(keys / "trainer.key_secret"), "--allow", str(keys / "robots"),
    ] + (["--warmup", str(config.warmup)] if config.warmup else [])
    with Processes(logs, config.domain_id) as processes:
        trainer = processes.start("trainer", serve, to_terminal=True)
        endpoint = processes.first_line(trainer, "listening on ", timeout_s=120)
        processes.start("bridge", ["sim_bridge", "--adapter", "dds", "--task", "pick_place", "--seed", str(HIL_SEED), "--speed", str(config.speed)])
        node_params = {
            "model_path": pretrained / "policy_v1.onnx", "trainer_endpoint": endpoint, "robot_id": ROBOT_ID,
            "spool_dir": config.out / "spool", "secret_key_file": keys / f"{ROBOT_ID}.key_secret", "trainer_key_file": keys / "trainer.key",
        }
        node = ["o2o-robot", "--adapter", "dds", "--params", str(CONFIG)] + [a for k, v in node_params.items() for a in ("-p", f"{k}:={v}")]
        processes.start("robot node", node)
        processes.wait_for(trainer, progress=lambda: episodes_stored(run))
    mark_done(run, settings)
    return run


def stage_evaluate(config: DemoConfig, pretrained: Path, finetuned: Path) -> dict[str, float]:
    """Both ensembles on the same fixed-seed episodes, acting on the mixture's mean."""
    path = config.out / "evaluation.json"
    settings = {"episodes": config.eval_episodes, "after": finished(finetuned)}
    previous = json.loads(path.read_text()) if path.is_file() else {}
    if previous.get("settings") == settings:
        return previous["success_rate"]
    announce(4, f"judging the pretrained and the fine-tuned ensemble on {config.eval_episodes} fixed-seed episodes")
    set_threads(1)
    env = make_env(ENV_ID)
    scores = {}
    for name, run in (("pretrained", pretrained), ("finetuned", finetuned)):
        scores[name] = evaluate(agent_from_checkpoint(read_checkpoint(run)), env, config.eval_episodes)["eval/success_rate"]
        print(f"  {name}: success {scores[name]:.2f} (seeds {EVAL_SEED_OFFSET}..{EVAL_SEED_OFFSET + config.eval_episodes - 1})")
    env.close()
    path.write_text(json.dumps({"settings": settings, "success_rate": scores}, indent=1) + "\n")
    return scores


def plot(config: DemoConfig, finetuned: Path, scores: dict[str, float]) -> Path:
    """Success and return of the robot's episodes against the transitions streamed, with each
    weight push marked and the before/after judgement as reference lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    metrics = read_metrics(finetuned)
    steps, success = (np.asarray(v) for v in metrics["episode/success"])
    _, returns = (np.asarray(v) for v in metrics["episode/return"])
    pushes = metrics.get("weights/version", ([], []))[0]
    window = min(10, len(success))
    smooth = lambda v: np.convolve(v, np.ones(window) / window, mode="valid")  # noqa: E731
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    left.plot(steps[window - 1 :], smooth(success), label=f"robot episodes (mean of {window}, exploring)")
    left.axhline(scores["pretrained"], color="grey", linestyle="--", label=f"pretrained, deterministic: {scores['pretrained']:.2f}")
    left.axhline(scores["finetuned"], color="tab:green", linestyle="-", label=f"fine-tuned, deterministic: {scores['finetuned']:.2f}")
    left.set(title="PickPlace success on the simulated robot", xlabel="robot transitions streamed", ylim=(-0.05, 1.05))
    right.plot(steps[window - 1 :], smooth(returns))
    right.set(title=f"episode return (mean of {window})", xlabel="robot transitions streamed")
    for ax in (left, right):
        for step in pushes:
            ax.axvline(step, color="tab:orange", alpha=0.25, linewidth=1)
        ax.grid(alpha=0.3)
    left.legend(fontsize="small", loc="lower right", title="orange: weights pushed", title_fontsize="small")
    fig.tight_layout()
    out = config.out / "learning_curve.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


# ---------------------------------------------------------------------------------- helpers


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def announce(number: int, what: str) -> None:
    print(f"\n[{PROG} {number}/4] {what}", flush=True)


def reusable(path: Path, settings: dict) -> bool:
    """The stage's output is there, finished, with these settings (which name the run of the
    stage before: a stage redone makes every later one run again)."""
    if finished(path).get("settings") == settings:
        print(f"[{PROG}] reusing {path} (delete it to redo that stage)")
        return True
    return False


def finished(path: Path) -> dict:
    """A finished stage's marker: its settings and when it finished; {} if it did not finish."""
    marker = path / "demo_stage.json"
    return json.loads(marker.read_text()) if marker.is_file() else {}


def mark_done(path: Path, settings: dict) -> None:
    (path / "demo_stage.json").write_text(json.dumps({"settings": settings, "finished": time.time()}) + "\n")


def make_keys(root: Path) -> Path:
    """CURVE key pairs for the trainer and the robot, the robot's public key in the trainer's
    allow-list directory (README, "Connecting a robot to a trainer")."""
    generate("trainer", root)
    public, _ = generate(ROBOT_ID, root)
    (root / "robots").mkdir()
    shutil.copy(public, root / "robots")
    return root


def episodes_stored(run: Path) -> int:
    try:
        return len(open_dataset(run / "storage" / "dataset"))
    except DatasetError:
        return 0


class Processes:
    """The deployed processes: started as commands next to this interpreter, their output in
    log files (the trainer's progress bar also on the terminal), all stopped with SIGTERM when
    the stage ends or fails."""

    def __init__(self, logs: Path, domain_id: int) -> None:
        self.logs = logs
        self.env = {**os.environ, "CYCLONEDDS_URI": CYCLONE_LOOPBACK, "ROS_DOMAIN_ID": str(domain_id), "PYTHONUNBUFFERED": "1"}
        self.running: dict[str, subprocess.Popen] = {}

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc) -> None:
        for name, process in reversed(list(self.running.items())):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    print(f"[{PROG}] {name} did not stop within 20 s of SIGTERM; killing it", file=sys.stderr)
                    process.kill()
                    process.wait()

    def start(self, name: str, command: list[str], to_terminal: bool = False) -> subprocess.Popen:
        argv = [str(Path(sys.executable).with_name(command[0])), *command[1:]]
        if to_terminal:  # its stdout is read here; its stderr (progress bar, log) is the terminal's
            process = subprocess.Popen(argv, env=self.env, text=True, stdout=subprocess.PIPE)
        else:
            with open(self.log_path(name), "w") as log:
                process = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        process.name = name
        self.running[name] = process
        return process

    def log_path(self, name: str) -> Path:
        return self.logs / f"{name.replace(' ', '_')}.log"

    def first_line(self, process: subprocess.Popen, prefix: str, timeout_s: float) -> str:
        """What follows `prefix` on the process's first line of stdout; the rest of its stdout is
        copied to the terminal from then on."""
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.append(process.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout_s)
        if not lines or not lines[0].startswith(prefix):
            raise DemoError(f"{process.name} did not start (exit status {process.poll()}): {lines[0].strip() if lines else 'no output'}")
        threading.Thread(target=lambda: shutil.copyfileobj(process.stdout, sys.stdout), daemon=True).start()
        return lines[0][len(prefix) :].strip()

    def wait_for(self, process: subprocess.Popen, progress) -> None:
        """Until `process` exits with 0; the others must keep running, and `progress()` must grow
        at least every STALL_S seconds."""
        last, last_change = progress(), time.monotonic()
        while process.poll() is None:
            time.sleep(2.0)  # a supervisor's period, not synchronisation: every check below is a poll
            for name, other in self.running.items():
                if other is not process and other.poll() is not None:
                    raise DemoError(f"{name} exited with status {other.returncode}; its log: {self.log_path(name)}\n{self.tail(name)}")
            now, value = time.monotonic(), progress()
            if value != last:
                last, last_change = value, now
            elif now - last_change > STALL_S:
                raise DemoError(f"no robot episode reached the trainer for {STALL_S:.0f} s; logs in {self.logs}\n{self.tail('robot node')}")
        if process.returncode != 0:
            raise DemoError(f"{process.name} exited with status {process.returncode}")

    def tail(self, name: str, lines: int = 15) -> str:
        path = self.log_path(name)
        return "\n".join(path.read_text().splitlines()[-lines:]) if path.is_file() else ""


if __name__ == "__main__":
    sys.exit(main())
