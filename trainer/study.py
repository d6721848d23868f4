"""`o2o-trainer study`: a grid of local fine-tuning runs from a YAML spec, and its tables.

A study is tasks × replay modes × ensemble sizes × seeds × variants (named sets of `pretrain`
and `finetune-local` flags). Every run is a subprocess of this CLI with one torch thread, up to
`--workers` at a time, its output in its run directory's log.txt. Runs that would pretrain
identically share one pretraining, which runs first; the fine-tunes that start from it wait for
it. A finished run leaves `study_done.json`, so a rerun skips it; a run directory without one
(an interrupted run) and a run whose command changed (the spec was edited) are done again, and
so is every run that starts from a redone one. After every finished fine-tune the results are
rewritten from the finished runs' metrics.csv: study.json, study.md (tables) and study.png.

The arithmetic is in small pure functions (`seed_metrics`, `aggregate`, `binned_mean`,
`markdown`) that the tests check on hand-made curves.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
import yaml  # noqa: E402
from tqdm import tqdm  # noqa: E402

from trainer.checkpoint import RunError  # noqa: E402
from trainer.config import FinetuneConfig, PretrainConfig, add_config_flags, config_from_args  # noqa: E402
from trainer.metrics import read_metrics  # noqa: E402
from trainer.replay import REPLAY_MODES  # noqa: E402
from trainer.run import progress  # noqa: E402

PROG = "o2o-trainer study"
SPEC_NAME = "spec.yaml"
MARKER = "study_done.json"
LOG = "log.txt"
SUCCESS = "eval/success_rate"
OFFLINE = "replay/offline_fraction"
THRESHOLD = 0.9  # "steps to 0.9": the first evaluation at which the mean over seeds reaches it
OFFLINE_BIN = 250  # env steps per point of the offline share's curve
POLL_S = 0.25  # how often the running subprocesses are checked
STOP_S = 20.0  # after SIGTERM, how long a subprocess gets before SIGKILL
TOP_KEYS = ("name", "tasks", "seeds", "replay", "ensemble_sizes", "pretrain", "finetune", "variants")
TASK_KEYS = ("env", "data", "collect")
# Flags the study sets itself, per command; a spec that sets them is refused.
STUDY_FLAGS = {
    "pretrain": ("data", "out", "seed", "threads", "resume"),
    "finetune": ("env", "init", "out", "seed", "threads"),
}
# The grid's axes: set by the top-level `replay` and `ensemble_sizes`, not by the common flags.
AXIS_FLAGS = {"replay": "replay", "ensemble-size": "ensemble_sizes"}
RESERVED_KEYS = ("pretrain", "collect")  # directories beside the variants' in runs/TASK/
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
_FLAG = re.compile(r"[a-z0-9][a-z0-9-]*")
_SLUG_PART = re.compile(r"[a-z0-9-]+=[A-Za-z0-9.+-]+")

Flags = dict[str, "str | bool"]


# ---------------------------------------------------------------------------------- spec


@dataclass(frozen=True)
class Task:
    name: str
    env: str  # finetune-local's --env
    data: Path  # the offline dataset, relative to the working directory
    collect: tuple[str, ...] = ()  # `o2o-sim collect` arguments that make `data` when it is missing


@dataclass(frozen=True)
class Variant:
    name: str
    pretrain: Flags
    finetune: Flags


@dataclass(frozen=True)
class Spec:
    name: str
    tasks: tuple[Task, ...]
    seeds: tuple[int, ...]
    replay: tuple[str, ...]
    ensemble_sizes: tuple[int, ...]  # empty: --ensemble-size is left to the preset
    pretrain: Flags
    finetune: Flags
    variants: tuple[Variant, ...]


@dataclass(frozen=True)
class Cell:
    """One row of the tables: a variant with one replay mode and ensemble size, over the seeds.
    Its key names the row and the runs' directory; replay and size are in it only when the
    study has more than one of them."""

    variant: Variant
    replay: str
    size: int | None
    key: str


def load_spec(path: Path) -> Spec:
    """The spec in `path`, checked for its structure; a mistake is a RunError of one line."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise RunError(f"{path}: cannot read the spec ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise RunError(f"{path}: not YAML ({' '.join(str(exc).split())})") from None
    raw = _mapping(raw, f"{path}")
    unknown = sorted(str(key) for key in raw if key not in TOP_KEYS)
    if unknown:
        raise RunError(f"{path}: unknown key {unknown[0]!r} (a spec has {', '.join(TOP_KEYS)})")
    tasks = tuple(
        _task(_name(name, f"{path}: tasks"), value, f"{path}: task {name}")
        for name, value in _mapping(raw.get("tasks"), f"{path}: tasks").items()
    )
    if not tasks:
        raise RunError(f"{path}: tasks: the study has no tasks")
    variants = tuple(
        _variant(_name(name, f"{path}: variants"), value, f"{path}: variant {name}")
        for name, value in _mapping(raw.get("variants"), f"{path}: variants").items()
    )
    if not variants:
        raise RunError(f"{path}: variants: the study has no variants (a variant with no flags is `baseline: {{}}`)")
    seeds = _list(raw.get("seeds"), f"{path}: seeds", int)
    replay = _list(raw.get("replay", ["balanced"]), f"{path}: replay", str)
    bad = [mode for mode in replay if mode not in REPLAY_MODES]
    if bad:
        raise RunError(f"{path}: replay: {bad[0]!r} is not a replay mode ({', '.join(REPLAY_MODES)})")
    sizes = _list(raw["ensemble_sizes"], f"{path}: ensemble_sizes", int) if "ensemble_sizes" in raw else ()
    if any(size < 1 for size in sizes):
        raise RunError(f"{path}: ensemble_sizes: sizes are 1 or more")
    common = {command: _flags(raw.get(command), f"{path}: {command}", command) for command in ("pretrain", "finetune")}
    for flag, key in AXIS_FLAGS.items():
        if flag in common["finetune"]:
            raise RunError(f"{path}: finetune: set {flag} with the top-level `{key}` (a variant may override it)")
    spec = Spec(
        name=str(raw.get("name", Path(path).stem)),
        tasks=tasks,
        seeds=seeds,
        replay=replay,
        ensemble_sizes=sizes,
        pretrain=common["pretrain"],
        finetune=common["finetune"],
        variants=variants,
    )
    keys = [cell.key for cell in cells(spec)]
    clash = next((key for key in keys if keys.count(key) > 1 or key in RESERVED_KEYS), None)
    if clash is not None:
        raise RunError(f"{path}: variants: {clash!r} names two rows or a directory of the study; rename the variant")
    return spec


def _mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RunError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
    return value


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise RunError(f"{where}: {value!r} is not a name (letters, digits, _ . + -; it names directories)")
    return value


def _list(value: Any, where: str, kind: type) -> tuple:
    if not isinstance(value, list) or not value:
        raise RunError(f"{where}: expected a non-empty list, got {value!r}")
    wrong = next((item for item in value if type(item) is not kind), None)  # bool is not an int here
    if wrong is not None:
        raise RunError(f"{where}: {wrong!r} is not {'an integer' if kind is int else 'a string'}")
    if len(set(value)) < len(value):
        raise RunError(f"{where}: {value!r} repeats an entry")
    return tuple(value)


def _task(name: str, value: Any, where: str) -> Task:
    value = _mapping(value, where)
    unknown = sorted(str(key) for key in value if key not in TASK_KEYS)
    if unknown:
        raise RunError(f"{where}: unknown key {unknown[0]!r} (a task has {', '.join(TASK_KEYS)})")
    for key in ("env", "data"):
        if not isinstance(value.get(key), str) or not value[key]:
            raise RunError(f"{where}: `{key}` is required (a string)")
    collect = value.get("collect", [])
    if not isinstance(collect, list) or any(isinstance(a, (bool, dict, list)) or a is None for a in collect):
        raise RunError(f"{where}: collect: expected a list of `o2o-sim collect` arguments, got {collect!r}")
    if "--out" in collect:
        raise RunError(f"{where}: collect: --out is set by the study (it collects into `data`)")
    return Task(name, value["env"], Path(value["data"]), tuple(str(a) for a in collect))


def _variant(name: str, value: Any, where: str) -> Variant:
    value = _mapping(value, where)
    unknown = sorted(str(key) for key in value if key not in ("pretrain", "finetune"))
    if unknown:
        raise RunError(f"{where}: unknown key {unknown[0]!r} (a variant has pretrain and finetune flags)")
    return Variant(
        name,
        _flags(value.get("pretrain"), f"{where}: pretrain", "pretrain"),
        _flags(value.get("finetune"), f"{where}: finetune", "finetune"),
    )


def _flags(value: Any, where: str, command: str) -> Flags:
    """Flag name -> its value as text (True/False: a boolean flag's --x / --no-x; a list: comma-joined)."""
    flags: Flags = {}
    for name, item in _mapping(value, where).items():
        if not isinstance(name, str) or not _FLAG.fullmatch(name):
            raise RunError(f"{where}: {name!r} is not a flag name (write it without --, e.g. actor-lr)")
        if name in STUDY_FLAGS[command]:
            raise RunError(f"{where}: --{name} is set by the study")
        if isinstance(item, bool):
            flags[name] = item
        elif isinstance(item, (int, float, str)):
            flags[name] = str(item)
        elif isinstance(item, list) and item and all(_scalar(i) for i in item):
            flags[name] = ",".join(str(i) for i in item)
        else:
            raise RunError(f"{where}: {name}: expected a number, a string, true/false or a list, got {item!r}")
    return flags


def _scalar(value: Any) -> bool:
    return isinstance(value, (int, float, str)) and not isinstance(value, bool)


def cells(spec: Spec) -> list[Cell]:
    """The study's rows, in the order of its variants, replay modes and ensemble sizes."""
    out = []
    for variant in spec.variants:
        for replay in spec.replay:
            for size in spec.ensemble_sizes or (None,):
                key = variant.name
                key += f"-{replay}" if len(spec.replay) > 1 else ""
                key += f"-N{size}" if len(spec.ensemble_sizes) > 1 else ""
                out.append(Cell(variant, replay, size, key))
    return out


def finetune_dir(root: Path, task: str, key: str, seed: int) -> Path:
    return root / "runs" / task / key / f"seed{seed}"


# ---------------------------------------------------------------------------------- plan


@dataclass(eq=False)
class Job:
    """One subprocess of the study."""

    label: str  # how lines and errors name it: TASK/KEY/seedK
    kind: str  # collect | pretrain | finetune
    run_dir: Path  # holds log.txt and, once finished, the marker
    argv: list[str]
    needs: Job | None = None  # runs after this one has finished
    data: Path | None = None  # collect: the dataset it makes (written beside it, renamed when complete)
    done: bool = False


def plan(spec: Spec, root: Path) -> list[Job]:
    """Every run of the study, each after the one it needs: per task its collection (if any),
    then seed by seed the distinct pretrainings and the fine-tunes that start from them. Paths are absolute, so that a study can be
    continued from another working directory with the same `data`."""
    root = root.absolute()
    python = [sys.executable, "-m"]
    jobs: list[Job] = []
    for task in spec.tasks:
        data = task.data.absolute()
        collect = None
        if task.collect:
            argv = [*python, "sim.cli", "collect", *task.collect, "--out", str(_collecting(data))]
            collect = Job(f"{task.name}/collect", "collect", root / "runs" / task.name / "collect", argv, data=data)
            jobs.append(collect)
        common = pretrain_flags(spec, Variant("", {}, {}))
        pretrains: dict[tuple[int, tuple[str, ...]], Job] = {}
        for seed in spec.seeds:  # seed by seed: a partial study has whole seeds to show early
            finetunes = []
            for cell in cells(spec):
                flags = pretrain_flags(spec, cell.variant)
                identity = (seed, tuple(_args(flags)))
                if identity not in pretrains:
                    name = f"{_slug({k: v for k, v in flags.items() if common.get(k) != v})}-seed{seed}"
                    run = root / "runs" / task.name / "pretrain" / name
                    argv = [*python, "trainer.cli", "pretrain", "--data", str(data), "--out", str(run)]
                    argv += ["--seed", str(seed), "--threads", "1", *_args(flags)]
                    pretrains[identity] = Job(f"{task.name}/pretrain/{name}", "pretrain", run, argv, needs=collect)
                    jobs.append(pretrains[identity])
                pre = pretrains[identity]
                axes: Flags = {"replay": cell.replay} | ({"ensemble-size": str(cell.size)} if cell.size else {})
                run = finetune_dir(root, task.name, cell.key, seed)
                argv = [*python, "trainer.cli", "finetune-local", "--env", task.env, "--init", str(pre.run_dir)]
                argv += ["--out", str(run), "--seed", str(seed), "--threads", "1"]
                argv += _args(spec.finetune | axes | cell.variant.finetune)
                finetunes.append(Job(f"{task.name}/{cell.key}/seed{seed}", "finetune", run, argv, needs=pre))
            jobs += finetunes
    return jobs


def pretrain_flags(spec: Spec, variant: Variant) -> Flags:
    """A variant's pretrain flags over the study's. With several ensemble sizes the study
    pretrains the largest (the fine-tunes take its first members) unless a flag says otherwise."""
    axis: Flags = {"ensemble-size": str(max(spec.ensemble_sizes))} if spec.ensemble_sizes else {}
    return axis | spec.pretrain | variant.pretrain


def _args(flags: Flags) -> list[str]:
    """Command-line arguments, sorted by flag so that the command does not depend on the spec's order."""
    out = []
    for name, value in sorted(flags.items()):
        if value is True or value is False:
            out.append(f"--{name}" if value else f"--no-{name}")
        else:
            out += [f"--{name}", value]
    return out


def _slug(overrides: Flags) -> str:
    """A pretraining's directory name: `base`, the flags that differ from the study's common
    ones (e.g. `cql-alpha=1`), or where those do not make a short safe name, a hash of them."""
    parts = [f"{name}={_text(value)}" for name, value in sorted(overrides.items())]
    if not parts:
        return "base"
    readable = "_".join(parts)
    if len(readable) <= 60 and all(_SLUG_PART.fullmatch(part) for part in parts):
        return readable
    return "h" + hashlib.sha1(readable.encode()).hexdigest()[:10]


def _text(value: str | bool) -> str:
    return str(value).lower() if isinstance(value, bool) else value


def _collecting(data: Path) -> Path:
    return data.with_name(data.name + ".collecting")


class _FlagParser(argparse.ArgumentParser):
    """argparse that raises instead of printing its usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise RunError(message)


def check_flags(jobs: list[Job]) -> None:
    """Parse every run's flags as its command will, before anything runs: a mistyped flag or
    value in the spec is one line, not a grid of failed runs. A fine-tune's network comes from
    its pretraining, of which it may take the first members."""
    commands = {"pretrain": PretrainConfig, "finetune": FinetuneConfig}
    parsers = {kind: _FlagParser(prog=kind, add_help=False) for kind in commands}
    for kind, cls in commands.items():
        add_config_flags(parsers[kind], cls)
    members: dict[Job, int] = {}
    for job in jobs:
        if job.kind == "collect":
            continue
        try:
            config, given = config_from_args(commands[job.kind], parsers[job.kind].parse_args(job.argv[4:]))
        except (RunError, ValueError, TypeError) as exc:
            raise RunError(f"{job.label}: {exc}") from None
        size = config.network.ensemble_size
        shape = sorted(name for name in given if name.startswith("network.") and name != "network.ensemble_size")
        if job.kind == "pretrain":
            members[job] = size
        elif shape:
            flag = shape[0].split(".", 1)[1].replace("_", "-")
            raise RunError(f"{job.label}: --{flag}: the network's shape comes from the pretraining (set it there)")
        elif "network.ensemble_size" in given and size > members[job.needs]:
            trained = members[job.needs]
            raise RunError(f"{job.label}: --ensemble-size {size}, but {job.needs.label} pretrains {trained} members")


def read_marker(run_dir: Path) -> dict[str, Any]:
    """A finished run's marker; {} if it did not finish."""
    try:
        return json.loads((run_dir / MARKER).read_text())
    except (OSError, ValueError):
        return {}


def _finished_at(job: Job | None) -> float | None:
    return read_marker(job.run_dir).get("finished") if job is not None else None


def mark_done(jobs: list[Job]) -> None:
    """Which runs are finished with the command they would run now, after the run they need as
    it is now. A collection is done when its dataset exists (however it was made)."""
    for job in jobs:
        if job.kind == "collect":
            job.done = job.data.is_dir()
            continue
        marker = read_marker(job.run_dir)
        job.done = (
            (job.needs is None or job.needs.done)
            and marker.get("args") == job.argv[1:]
            and marker.get("after") == _finished_at(job.needs)
        )


# ---------------------------------------------------------------------------------- running


def run_jobs(jobs: list[Job], workers: int, finished: Callable[[Job, float], None]) -> tuple[list[Job], list[Job]]:
    """Run the jobs not done yet, up to `workers` at once and each after the job it needs, in
    list order; `finished(job, seconds)` after each that exits 0. Returns the failed jobs and
    those not run because a job they need failed. On KeyboardInterrupt (SIGTERM too, with
    `study`'s handler) the running subprocesses are stopped before it propagates."""
    pending = [job for job in jobs if not job.done]
    running: dict[Job, tuple[subprocess.Popen, float]] = {}
    failed: list[Job] = []
    blocked: list[Job] = []
    bar = progress(len(jobs), len(jobs) - len(pending), "study", "run")
    try:
        while pending or running:
            for job in list(pending):
                if job.needs in failed or job.needs in blocked:
                    pending.remove(job)
                    blocked.append(job)
                    bar.update(1)
                elif len(running) < workers and (job.needs is None or job.needs.done):
                    pending.remove(job)
                    running[job] = (_start(job), time.monotonic())
            time.sleep(POLL_S)  # a supervisor's period: every check below is a poll
            for job, (process, started) in list(running.items()):
                if process.poll() is None:
                    continue
                del running[job]
                bar.update(1)
                seconds = time.monotonic() - started
                if process.returncode == 0:
                    _mark_finished(job, seconds)
                    finished(job, seconds)
                else:
                    failed.append(job)
                    log = job.run_dir / LOG
                    status = process.returncode
                    tqdm.write(f"FAILED {job.label} (exit status {status}); the end of {log}:\n{log_tail(log)}")
    finally:
        _stop([process for process, _ in running.values()])
        bar.close()
    return failed, blocked


def _start(job: Job) -> subprocess.Popen:
    job.run_dir.mkdir(parents=True, exist_ok=True)
    if job.kind == "collect":
        shutil.rmtree(_collecting(job.data), ignore_errors=True)
        job.data.parent.mkdir(parents=True, exist_ok=True)
    with open(job.run_dir / LOG, "w") as log:
        log.write(f"$ {shlex.join(job.argv)}\n")
        log.flush()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        return subprocess.Popen(job.argv, stdout=log, stderr=subprocess.STDOUT, env=env)


def _mark_finished(job: Job, seconds: float) -> None:
    if job.kind == "collect":
        os.replace(_collecting(job.data), job.data)
    marker = {
        "command": shlex.join(job.argv),
        "args": job.argv[1:],  # what a rerun compares (the interpreter may move)
        "after": _finished_at(job.needs),  # the marker of the run it started from
        "wall_seconds": round(seconds, 1),
        "finished": time.time(),
    }
    tmp = job.run_dir / (MARKER + ".tmp")
    tmp.write_text(json.dumps(marker, indent=1) + "\n")
    os.replace(tmp, job.run_dir / MARKER)
    job.done = True


def _stop(processes: list[subprocess.Popen]) -> None:
    """SIGTERM to all, then up to STOP_S for them to exit, then SIGKILL."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + STOP_S
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def log_tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log as a terminal shows them (a progress bar's redraws collapsed)."""
    text = path.read_text(errors="replace") if path.is_file() else ""
    shown = [line.split("\r")[-1] for line in text.splitlines()]
    return "\n".join(f"    {line}" for line in [line for line in shown if line.strip()][-lines:])


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


# ---------------------------------------------------------------------------------- arithmetic


def seed_metrics(curve: Sequence[tuple[int, float]]) -> dict[str, float | None]:
    """One seed's evaluation curve [(step, success)] in numbers: `pretrained` (the evaluation at
    step 0, before any online step), `lowest` (the lowest later one; None without any),
    `worst_drop` (how far below the pretrained level it fell, 0 if never), `final` (the last)
    and `auc` (area under success against steps over the step span: the mean success, in [0, 1])."""
    points = sorted(curve)
    steps = np.array([step for step, _ in points], float)
    values = np.array([value for _, value in points], float)
    pretrained = values[0]
    later = values[1:]
    lowest = float(later.min()) if later.size else None
    span = steps[-1] - steps[0]
    auc = float(np.sum((values[1:] + values[:-1]) / 2 * np.diff(steps)) / span) if span > 0 else float(values[0])
    return {
        "pretrained": float(pretrained),
        "lowest": lowest,
        "worst_drop": max(0.0, float(pretrained) - lowest) if lowest is not None else 0.0,
        "final": float(values[-1]),
        "auc": auc,
    }


def aggregate(
    curves: dict[int, Sequence[tuple[int, float]]], offline: dict[int, tuple[list[int], list[float]]] | None = None
) -> dict[str, Any]:
    """The seeds of one row: means of the per-seed numbers, the worst seed's drop, the mean ± std
    curve over the evaluation steps every seed has, the first of those steps whose mean reaches
    THRESHOLD (None if none does), and with `offline` (seed -> steps, offline shares of the
    batches) their mean per OFFLINE_BIN steps."""
    per_seed = {seed: seed_metrics(curve) for seed, curve in sorted(curves.items())}
    tables = [dict(curve) for curve in curves.values()]
    steps = sorted(set.intersection(*(set(table) for table in tables)))
    values = np.array([[table[step] for table in tables] for step in steps], float).reshape(len(steps), len(tables))
    mean, std = values.mean(axis=1), values.std(axis=1)
    # Each seed against its own pretrained level: seeds that start apart hide a dip in the mean.
    change = values - np.array([per_seed[seed]["pretrained"] for seed in curves])
    reached = next((step for step, m in zip(steps, mean) if m >= THRESHOLD - 1e-9), None)
    seeds = list(per_seed.values())
    result = {
        "seeds": len(per_seed),
        "pretrained": _round(np.mean([s["pretrained"] for s in seeds])),
        "worst_drop": _round(np.mean([s["worst_drop"] for s in seeds])),
        "worst_drop_max": _round(max(s["worst_drop"] for s in seeds)),
        "final": _round(np.mean([s["final"] for s in seeds])),
        "auc": _round(np.mean([s["auc"] for s in seeds])),
        "steps_to_90": reached,
        "curve": [[step, _round(m), _round(s)] for step, m, s in zip(steps, mean, std)],
        "change_curve": [
            [step, _round(m), _round(s)] for step, m, s in zip(steps, change.mean(axis=1), change.std(axis=1))
        ],
        "per_seed": {seed: {k: None if v is None else _round(v) for k, v in s.items()} for seed, s in per_seed.items()},
    }
    if offline:
        result["offline_fraction"] = binned_mean(offline)
    return result


def binned_mean(series: dict[int, tuple[list[int], list[float]]], width: int = OFFLINE_BIN) -> list[list[float]]:
    """[[step, mean over seeds]]: each seed's values averaged in bins of `width` steps (the bin
    ((k-1)·width, k·width]), over the bins every seed has; a bin is drawn at the last step any
    seed logged in it (k·width but for a run's last, partial bin)."""
    per_seed, last = [], defaultdict(int)
    for steps, values in series.values():
        bins: dict[int, list[float]] = defaultdict(list)
        for step, value in zip(steps, values):
            edge = -(-step // width) * width
            bins[edge].append(value)
            last[edge] = max(last[edge], step)
        per_seed.append({edge: float(np.mean(v)) for edge, v in bins.items()})
    common = sorted(set.intersection(*(set(bins) for bins in per_seed)))
    return [[last[edge], _round(np.mean([bins[edge] for bins in per_seed]))] for edge in common]


def _round(value: float) -> float:
    return round(float(value), 4)


# ---------------------------------------------------------------------------------- results


def results(spec: Spec, root: Path, wall_seconds: float) -> dict[str, Any]:
    """What study.json holds, from the finished fine-tunes in `root`."""
    tasks = {}
    finished = total = 0
    for task in spec.tasks:
        rows, unfinished = {}, {}
        for cell in cells(spec):
            curves, offline = {}, {}
            for seed in spec.seeds:
                total += 1
                run = finetune_dir(root, task.name, cell.key, seed)
                metrics = read_metrics(run) if (run / MARKER).is_file() else {}
                if SUCCESS not in metrics:
                    unfinished.setdefault(cell.key, []).append(seed)
                    continue
                finished += 1
                curves[seed] = list(zip(*metrics[SUCCESS]))
                if OFFLINE in metrics:
                    offline[seed] = metrics[OFFLINE]
            if curves:
                rows[cell.key] = aggregate(curves, offline)
        pretrained = [s["pretrained"] for row in rows.values() for s in row["per_seed"].values()]
        tasks[task.name] = {
            "pretrained": _round(np.mean(pretrained)) if pretrained else None,
            "variants": rows,
            "unfinished": unfinished,
        }
    return {
        "name": spec.name,
        "command": f"o2o-trainer study {shlex.quote(str(root / SPEC_NAME))} --out {shlex.quote(str(root))}",
        "report_command": f"o2o-trainer study --report {shlex.quote(str(root))}",
        "wall_seconds": round(wall_seconds, 1),
        "runs": {"finished": finished, "total": total},
        "tasks": tasks,
    }


def markdown(study: dict[str, Any]) -> str:
    """study.md: per task the summary table and the per-seed table (every seed, finished or not,
    so that a bad seed shows beside the good ones)."""
    runs = study["runs"]
    lines = [
        f"# Study {study['name']}",
        "",
        f"{runs['finished']} of {runs['total']} fine-tuning runs finished; "
        f"wall time {study['wall_seconds'] / 60:.1f} min.",
        f"Regenerate: `{study['command']}` (from the same working directory; finished runs are reused).",
        f"Tables and figure only: `{study['report_command']}`.",
        "",
        "Success rates of the deterministic policy on fixed-seed episodes. Worst drop: how far the "
        "success fell below its step-0 (pretrained) level at any later evaluation; AUC: mean success "
        f"over the run; steps to {THRESHOLD:g}: the first evaluation whose mean over seeds reaches it.",
        "",
        "![success against online steps](study.png)",
    ]
    for name, task in study["tasks"].items():
        level = "–" if task["pretrained"] is None else f"{task['pretrained']:.2f}"
        lines += ["", f"## {name}", "", f"Pretrained level (mean of every step-0 evaluation): {level}.", ""]
        lines += [
            f"| variant | seeds | pretrained | worst drop (mean / worst seed) | final | AUC | steps to {THRESHOLD:g} |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for key, row in task["variants"].items():
            reached = "–" if row["steps_to_90"] is None else str(row["steps_to_90"])
            lines.append(
                f"| {key} | {row['seeds']} | {row['pretrained']:.2f} | {row['worst_drop']:.2f} / "
                f"{row['worst_drop_max']:.2f} | {row['final']:.2f} | {row['auc']:.2f} | {reached} |"
            )
        lines += ["", "| variant | seed | pretrained | lowest | final |", "| --- | ---: | ---: | ---: | ---: |"]
        for key in [*task["variants"], *(k for k in task["unfinished"] if k not in task["variants"])]:
            for seed, s in task["variants"].get(key, {}).get("per_seed", {}).items():
                lowest = "–" if s["lowest"] is None else f"{s['lowest']:.2f}"
                lines.append(f"| {key} | {seed} | {s['pretrained']:.2f} | {lowest} | {s['final']:.2f} |")
            for seed in task["unfinished"].get(key, []):
                lines.append(f"| {key} | {seed} | not finished | | |")
    return "\n".join(lines) + "\n"


def plot_study(study: dict[str, Any], out: Path) -> Path:
    """study.png: per task, mean ± std success against online steps per row of the table with
    the pretrained level dashed; below it each seed's change from its own pretrained level
    (mean ± std: where a dip shows, whatever level each seed started at); at the bottom, where
    logged, the offline share of each batch."""
    tasks = study["tasks"]
    shares = any("offline_fraction" in row for task in tasks.values() for row in task["variants"].values())
    rows = 3 if shares else 2
    fig, axes = plt.subplots(rows, len(tasks), figsize=(6 * len(tasks), 4 * rows), squeeze=False)
    for col, (name, task) in enumerate(tasks.items()):
        top, middle = axes[0, col], axes[1, col]
        colours = plt.get_cmap("tab10" if len(task["variants"]) <= 10 else "tab20")
        for i, (key, row) in enumerate(task["variants"].items()):
            line = _band(top, row["curve"], f"{key} ({row['seeds']} seeds)", colours(i % colours.N))
            _band(middle, row.get("change_curve", []), key, line.get_color())
            if shares and "offline_fraction" in row:
                axes[2, col].plot(*zip(*row["offline_fraction"]), marker=".", color=line.get_color(), label=key)
        if task["pretrained"] is not None:
            top.axhline(task["pretrained"], color="grey", linestyle="--", label=f"pretrained {task['pretrained']:.2f}")
        middle.axhline(0.0, color="grey", linestyle="--")
        top.set(title=f"{name}: evaluation success (mean ± std)", xlabel="online env steps", ylim=(-0.05, 1.05))
        middle.set(title=f"{name}: success minus the seed's pretrained success", xlabel="online env steps")
        if top.get_legend_handles_labels()[0]:
            top.legend(fontsize="small")
        if shares:
            axes[2, col].set(
                title=f"{name}: offline share of each batch", xlabel="online env steps", ylim=(-0.05, 1.05)
            )
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _band(ax: Any, curve: list[list[float]], label: str, color: str | None = None) -> Any:
    """A mean line with its ± std band from [[step, mean, std], ...]."""
    steps, mean, std = (np.asarray(v) for v in zip(*curve)) if curve else (np.zeros(0),) * 3
    (line,) = ax.plot(steps, mean, marker=".", label=label, color=color)
    ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    return line


def write_report(spec: Spec, root: Path, wall_seconds: float) -> dict[str, Any]:
    """Rewrite study.json, study.md and study.png from the finished runs."""
    study = results(spec, root, wall_seconds)
    _write(root / "study.json", json.dumps(study, indent=1) + "\n")
    _write(root / "study.md", markdown(study))
    plot_study(study, root / "study.png")
    return study


def _write(path: Path, text: str) -> None:
    """Written whole, then renamed: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _previous_wall(root: Path) -> float:
    """The wall time of the study's earlier invocations, which a rerun adds to."""
    try:
        return float(json.loads((root / "study.json").read_text())["wall_seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


# ---------------------------------------------------------------------------------- command


def study(spec_path: Path | None, out: Path | None, workers: int = 1, report: Path | None = None) -> int:
    """`o2o-trainer study SPEC --out DIR [--workers K]`, or `--report DIR`; the exit status:
    0 all runs finished, 1 some failed (the others ran), 130 interrupted."""
    if report is not None:
        if spec_path is not None or out is not None:
            raise RunError("--report DIR rewrites a study's results; give no SPEC or --out with it")
        if not (report / SPEC_NAME).is_file():
            raise RunError(f"{report}: no {SPEC_NAME}; not a study directory")
        written = write_report(load_spec(report / SPEC_NAME), report, _previous_wall(report))
        runs = written["runs"]
        print(f"wrote {report / 'study.md'}, study.json and study.png ({runs['finished']} of {runs['total']} finished)")
        return 0
    if spec_path is None or out is None:
        raise RunError("give a SPEC and --out DIR (or --report DIR alone)")
    if workers < 1:
        raise RunError(f"--workers {workers}: must be 1 or more")
    spec = load_spec(spec_path)
    jobs = plan(spec, out)
    check_flags(jobs)
    out.mkdir(parents=True, exist_ok=True)
    if spec_path.resolve() != (out / SPEC_NAME).resolve():
        shutil.copyfile(spec_path, out / SPEC_NAME)
    mark_done(jobs)
    for job in jobs:
        if not job.done and job.run_dir.exists():
            changed = (job.run_dir / MARKER).exists()
            why = "its settings or the run it starts from changed" if changed else "unfinished: interrupted or failed"
            print(f"{PROG}: redoing {job.label} ({why})")
            shutil.rmtree(job.run_dir)
    earlier, started = _previous_wall(out), time.monotonic()
    ran = 0

    def finished(job: Job, seconds: float) -> None:
        nonlocal ran
        ran += 1
        line = f"{job.label}: {seconds:.0f} s"
        if job.kind == "finetune":
            s = seed_metrics(list(zip(*read_metrics(job.run_dir)[SUCCESS])))
            line += f", success {s['pretrained']:.2f} -> {s['final']:.2f}"
            write_report(spec, out, earlier + time.monotonic() - started)
        tqdm.write(line)

    reused = sum(job.done for job in jobs)
    previous = signal.signal(signal.SIGTERM, _interrupted)  # as Ctrl-C: the runs are stopped too
    try:
        failed, blocked = run_jobs(jobs, workers, finished)
    except KeyboardInterrupt:
        write_report(spec, out, earlier + time.monotonic() - started)
        print(f"{PROG}: interrupted; run it again to continue (finished runs are kept)", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    write_report(spec, out, earlier + time.monotonic() - started)
    print(
        f"{PROG}: ran {ran}, reused {reused}, failed {len(failed)}, not run {len(blocked)} "
        f"of {len(jobs)} runs; results in {out / 'study.md'}"
    )
    if failed:
        names = ", ".join(job.label for job in failed)
        after = f"; {len(blocked)} run(s) that start from them did not run" if blocked else ""
        print(f"{PROG}: error: {len(failed)} run(s) failed: {names} (their log.txt says why){after}", file=sys.stderr)
        return 1
    return 0
