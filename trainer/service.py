"""`o2o-trainer serve`: fine-tune a pretrained ensemble from the episodes robots stream in, and
push its weights back to them while they keep running.

The networked twin of finetune-local (trainer/finetune.py): the same agent, learner, metrics,
checkpoints and summary, with robots instead of a local env. Three threads:

    link thread (TrainerServer)   receive, write ahead, acknowledge; send weights and heartbeats
    episode writer (TransitionStore)   finished episode -> OUT/storage/dataset -> episode queue
    main thread (here)            episode queue -> learner; update, export, push, checkpoint

Only the main thread touches the learner. Updates are capped by the data received, so the
recipe is the local one whatever the robots' rate: the learner may be at most
`updates_per_step * (received - warmup + 1)` updates along; beyond that it waits for episodes.
The storage dataset is the durable online buffer: every start loads it into the online replay
first, so a restarted trainer loses no robot data. Pushed versions start at --first-version
(the robot starts with the export, version 1) and continue after the checkpointed one on
--resume; a checkpoint is written with every push, so a version is never offered twice.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from tqdm.contrib.logging import logging_redirect_tqdm

from robot_node.dataset import Dataset, DatasetError, Episode, EpisodeRecord, open_dataset
from robot_node.keys import KeyFileError
from robot_node.link_interface import Transition
from trainer.agent import EnsembleAgent
from trainer.checkpoint import RunError, agent_from_checkpoint, read_checkpoint, save_checkpoint
from trainer.config import ServeConfig, write_config
from trainer.link import ServerConfig, ServerConfigError, TrainerServer
from trainer.metrics import MetricsLogger, RunningMean
from trainer.online import build_learner, pretrained_agent, train, write_summary
from trainer.run import prepare_run_dir, progress, resolve_device, seed_everything, set_threads
from trainer.transition_store import StoreError, TransitionStore

log = logging.getLogger(__name__)

WAIT_S = 0.2  # the longest the main thread waits for an episode before it looks at the rest
REPORT_EVERY_S = 30.0  # the progress line without --steps
WATCH_EVERY_S = 1.0  # how often the robots' weight versions are looked at
DELIVER_S = 10.0  # at the end, how long connected robots get to confirm the final weights
RECENT = 20  # episodes in the success rates of the report and the summary
LAG_WARN_EVERY_S = 30.0  # how often a learner that has fallen behind says so


def episode_transitions(episode: Episode, episode_id: str) -> list[Transition]:
    """An episode as the steps a robot streamed: the last one carries the final observation.
    A stored episode always ended; one whose last step says neither terminal nor truncated
    (salvaged from an unfinished stream) counts as truncated there."""
    last = episode.length - 1
    versions = episode.policy_versions if episode.policy_versions is not None else np.zeros(episode.length, np.int64)
    return [
        Transition(
            episode_id=episode_id,
            step=t,
            image=episode.frames[t],
            state=episode.states[t],
            action=episode.actions[t],
            reward=float(episode.rewards[t]),
            terminal=bool(episode.terminals[t]),
            truncated=bool(episode.truncations[t]) or (t == last and not episode.terminals[t]),
            policy_version=int(versions[t]),
            stamp=0.0,  # not stored in datasets; the learner does not use it
            next_image=episode.frames[t + 1] if t == last else None,
            next_state=episode.states[t + 1] if t == last else None,
        )
        for t in range(episode.length)
    ]


def serve(config: ServeConfig, given: set[str] = frozenset()) -> Path:
    with _stop_on_signals() as stop:
        return _Service(config, given, stop).run()


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """SIGINT and SIGTERM end the service the clean way (final push, checkpoint, summary)."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _Service:
    """One run of the service: start-up in __init__ (nothing listens yet), then `run()`."""

    def __init__(self, config: ServeConfig, given: set[str], stop: threading.Event) -> None:
        if not config.init:
            raise RunError("--init is required: the pretrain run whose ensemble the service fine-tunes")
        for name in ("updates_per_step", "push_every", "log_every", "checkpoint_every"):
            if getattr(config, name) < 1:
                raise RunError(f"--{name.replace('_', '-')} {getattr(config, name)}: must be 1 or more")
        self.config = config
        self.stop = stop
        self.run_dir = prepare_run_dir(config.out, config.resume)
        device = resolve_device(config.device)
        set_threads(config.threads)
        seed_everything(config.seed)
        payload = read_checkpoint(self.run_dir) if config.resume else None
        if payload is not None and payload["kind"] != "serve":
            raise RunError(f"{self.run_dir}: holds a {payload['kind']} run, not a serve run")
        agent, data, alpha = self._agent_and_data(payload, given)
        template = _offline_template(data, agent)
        self.episodes: queue.Queue[tuple[Episode, EpisodeRecord]] = queue.Queue()
        # Opened before anything is written: a storage locked by another trainer stops us here.
        self.store = _open_storage(self.run_dir / "storage", template, self.episodes)
        try:
            self.learner = build_learner(config, agent.to(device), data, pretrained=True, alpha=alpha)
            if payload is not None:
                self.learner.load_state_dict(payload["learner"])
            self.dataset = str(Path(data).resolve())
            resolved = {"freeze_encoder_online": self.learner.config.freeze_encoder, "dataset": self.dataset}
            write_config(self.run_dir, config, device, **resolved, network=dataclasses.asdict(agent.config))
        except BaseException:
            self.store.close()
            raise
        self.pushed: int | None = payload["weights_version"] if payload is not None else None  # last offered
        self.version = config.first_version if self.pushed is None else max(config.first_version, self.pushed + 1)
        self.pushed_step = self.learner.train_step
        self.received = 0  # online transitions received, stored ones included
        self.loaded: set[str] = set()  # dataset files of the episodes loaded from storage at start
        self.successes: list[bool] = []  # of every episode, in arrival order
        self.pushes = 0
        self.beyond_steps = 0  # episodes stored after --steps was reached, not trained on
        self.warned: set[str] = set()
        self.lag_warned_at = -LAG_WARN_EVERY_S
        self.logger = MetricsLogger(self.run_dir, append=payload is not None)
        self.means = RunningMean()

    # ------------------------------------------------------------------ start-up

    def _agent_and_data(self, payload: dict | None, given: set[str]) -> tuple[EnsembleAgent, str, float | None]:
        """A fresh run starts from --init (with its pretrained α); a resumed one from its own
        checkpoint, whose learner state brings α."""
        if payload is not None:
            return agent_from_checkpoint(payload), self.config.data or payload["dataset"], None
        start = pretrained_agent(self.config.init, self.config.data, self.config.network, given)
        if not start.data:
            raise RunError(f"--init {self.config.init} names no dataset; give --data DIR")
        return start.agent, start.data, start.alpha

    def _load_stored(self) -> None:
        """Every episode already in the storage dataset goes into the online replay first. The
        store's writer may be writing recovered episodes meanwhile: those reach the queue as well
        and are skipped there (`self.loaded`)."""
        stored = open_dataset(self.store.dataset_dir)
        self.loaded = {record.file for record in stored.records}
        for record, episode in zip(stored.records, stored):
            self._add(episode, record)
        if stored.records:
            counters = self.learner.replay.counters
            log.info(
                "loaded %d stored robot episodes (%d transitions) into the online replay; replay: %s",
                len(stored.records), self.received, counters,
            )

    # ------------------------------------------------------------------ the loop

    def run(self) -> Path:
        started = time.monotonic()
        try:
            self._load_stored()
            self.server = self._open_server()
        except BaseException:
            self.logger.close()
            self.store.close()
            raise
        print(f"listening on {self.server.endpoint}", flush=True)
        self.bar = progress(self.config.steps, self.received, "serve", "transition") if self.config.steps else None
        try:
            with logging_redirect_tqdm():
                self._loop()
                self._finish()
        finally:
            if self.bar is not None:
                self.bar.close()
            self.logger.close()
            self.server.close()  # also closes the store, after the episodes it holds are written
        link = self.server.status()["counters"]
        self._summary(time.monotonic() - started, link)
        return self.run_dir

    def _open_server(self) -> TrainerServer:
        c = self.config
        keys = {"secret_key": c.key or None, "allow_dir": c.allow or None, "insecure": c.insecure}
        try:
            return TrainerServer(ServerConfig(bind=c.bind, **keys), self.store)
        except (ServerConfigError, KeyFileError) as exc:
            raise RunError(str(exc)) from None

    def _loop(self) -> None:
        last_report = last_watch = time.monotonic()
        at_report = (self.received, self.learner.train_step)
        while not self.stop.is_set():
            self._take_arrived()
            if self._may_update():
                train(self.learner, self.means, 1)
                self._after_update()
            elif self.config.steps and self.received >= self.config.steps:
                return
            else:
                self._wait_for_episode()
            now = time.monotonic()
            if now - last_watch >= WATCH_EVERY_S:
                self._watch_robots()
                last_watch = now
            if self.bar is None and now - last_report >= REPORT_EVERY_S:
                self._report(now - last_report, at_report)
                last_report, at_report = now, (self.received, self.learner.train_step)

    def _allowed_updates(self) -> int:
        """The update-to-data cap: K updates per transition received after warm-up."""
        return max(0, self.config.updates_per_step * (self.received - self.learner.config.warmup + 1))

    def _may_update(self) -> bool:
        return self.learner.ready and self.learner.train_step < self._allowed_updates()

    def _updates_behind(self) -> int:
        """Updates the data already allows that the learner has not done: a robot faster than the
        learner acts with policies this far behind what its data could have taught."""
        return max(0, self._allowed_updates() - self.learner.train_step) if self.learner.ready else 0

    def _policy_age(self, policy: int) -> int:
        """Pushes between the version an episode was acted with and the newest (0 before any)."""
        return self.pushed - policy if self.pushed is not None and policy >= 0 else 0

    def _warn_if_behind(self, behind: int, policy: int) -> None:
        """Say so while it happens when the learner lags the robots by more than a push interval."""
        now = time.monotonic()
        if behind <= self.config.push_every or now - self.lag_warned_at < LAG_WARN_EVERY_S:
            return
        self.lag_warned_at = now
        age = f"v{policy}, {self._policy_age(policy)} pushes behind v{self.pushed}" if self.pushed is not None else f"v{policy}"
        log.warning(
            "learner is %d updates behind the robots' data (more than --push-every %d); the robot acts with %s. "
            "Slow the robot, or give the trainer more CPU or a GPU",
            behind, self.config.push_every, age,
        )

    def _take_arrived(self) -> None:
        while True:
            try:
                episode, record = self.episodes.get_nowait()
            except queue.Empty:
                return
            self._arrived(episode, record)

    def _wait_for_episode(self) -> None:
        try:
            episode, record = self.episodes.get(timeout=WAIT_S)
        except queue.Empty:
            return
        self._arrived(episode, record)

    def _arrived(self, episode: Episode, record: EpisodeRecord) -> None:
        if record.file in self.loaded:  # written while the stored episodes were being loaded
            return
        if self.config.steps and self.received >= self.config.steps:
            # Robots keep streaming while the last allowed updates run: their episodes are in the
            # storage dataset, but counting them would raise the cap and the run would never end.
            self.beyond_steps += 1
            return
        self._add(episode, record)
        success = float(record.success)
        policy = int(episode.policy_versions[-1]) if episode.policy_versions is not None else -1
        behind = self._updates_behind()
        self.logger.log(
            self.received,
            {
                "episode/return": record.episode_return,
                "episode/success": success,
                "episode/length": record.length,
                "episode/policy_version": policy,
                "episode/policy_age": self._policy_age(policy),
                "learner/updates_behind": behind,
            },
        )
        self._warn_if_behind(behind, policy)
        log.info(
            "episode %d from robot %s: %d steps, return %.2f, success %d, policy v%d",
            len(self.successes), record.robot_id, record.length, record.episode_return, success, policy,
        )
        if self.bar is not None:
            self.bar.update(max(0, min(record.length, self.bar.total - self.bar.n)))

    def _add(self, episode: Episode, record: EpisodeRecord) -> None:
        for transition in episode_transitions(episode, record.file):  # the file is unique in the dataset
            self.learner.add_transition(transition)
        self.received += record.length
        self.successes.append(record.success)

    def _after_update(self) -> None:
        step = self.learner.train_step
        if step % self.config.log_every == 0:
            self.logger.log(self.received, {**self.means.pop(), "updates": step})
            if self.bar is not None:
                self.bar.set_postfix(
                    updates=step, behind=self._updates_behind(), version=self.pushed, success=f"{self._recent():.2f}"
                )
        if step % self.config.push_every == 0:
            self._push()  # checkpoints too
        elif step % self.config.checkpoint_every == 0:
            self._checkpoint()

    # ------------------------------------------------------------------ weights and checkpoints

    def _push(self) -> None:
        """Export and offer the weights to every robot, then checkpoint with the version."""
        version = self.version
        self._watch_robots()
        weights = self.learner.export_policy(version)
        self.server.push_weights(weights)
        self.pushed, self.pushed_step, self.version = version, self.learner.train_step, version + 1
        self.pushes += 1
        self.logger.log(self.received, {"weights/version": version})
        log.info("pushed weights v%d (update %d)", version, self.learner.train_step)
        self._checkpoint()

    def _watch_robots(self) -> None:
        """A robot that already holds the next version (or newer) would ignore it: say so once."""
        for robot_id, robot in self.server.status()["robots"].items():
            if robot["weights_seen"] >= self.version and robot_id not in self.warned:
                self.warned.add(robot_id)
                log.warning(
                    "robot %s holds weights v%d, so it ignores this trainer's pushes up to that version (next: v%d); "
                    "continue the run that pushed them (--resume) or start with --first-version %d",
                    robot_id, robot["weights_seen"], self.version, robot["weights_seen"] + 1,
                )

    def _checkpoint(self) -> None:
        extra = {"dataset": self.dataset, "weights_version": self.pushed, "received": self.received}
        save_checkpoint(
            self.run_dir,
            self.learner.agent,
            kind="serve",
            step=self.learner.train_step,
            learner_state=self.learner.state_dict(),
            extra=extra,
        )

    def _finish(self) -> None:
        """The clean ending (--steps reached, SIGINT or SIGTERM): push what was learned since the
        last push, give the robots a moment to take it, checkpoint."""
        if self.learner.train_step > self.pushed_step:
            self._push()
            self._deliver(self.pushed)
        else:
            self._checkpoint()

    def _deliver(self, version: int) -> None:
        deadline = time.monotonic() + DELIVER_S
        while time.monotonic() < deadline:
            robots = self.server.status()["robots"].values()
            if all(robot["weights_seen"] >= version for robot in robots):
                return
            time.sleep(0.05)
        log.warning("not every connected robot confirmed weights v%d within %.0f s", version, DELIVER_S)

    # ------------------------------------------------------------------ reporting

    def _recent(self, first: bool = False) -> float:
        window = self.successes[:RECENT] if first else self.successes[-RECENT:]
        return float(np.mean(window)) if window else 0.0

    def _report(self, seconds: float, at_report: tuple[int, int]) -> None:
        status = self.server.status()
        log.info(
            "serve: %.1f transitions/s received, %.2f updates/s, %d updates behind the data, %d robots connected, "
            "pushed %s, success of the last %d episodes %.2f",
            (self.received - at_report[0]) / seconds, (self.learner.train_step - at_report[1]) / seconds,
            self._updates_behind(), len(status["robots"]), f"v{self.pushed}" if self.pushed is not None else "nothing yet",
            RECENT, self._recent(),
        )

    def _summary(self, seconds: float, link: dict) -> None:
        learner = self.learner
        summary = {
            "episodes": len(self.successes),
            "transitions": self.received,
            "episodes_beyond_steps": self.beyond_steps,
            "updates": learner.train_step,
            "pushes": self.pushes,
            "last_version": self.pushed,
            "seconds": round(seconds, 1),
            f"success_first_{RECENT}": self._recent(first=True),
            f"success_last_{RECENT}": self._recent(),
            "replay": learner.replay.counters,
            "rejected": learner.rejected,
            "link": link,
        }
        write_summary(self.run_dir, summary)


def _offline_template(data: str, agent: EnsembleAgent) -> Dataset:
    """The offline dataset, whose task, env id, episode length and specs the robots' share."""
    template = open_dataset(data)
    if (template.observation_spec, template.action_spec) != (agent.observation_spec, agent.action_spec):
        raise RunError(
            f"{data}: the dataset's specs ({template.observation_spec}, {template.action_spec}) differ from "
            f"the checkpoint's ({agent.observation_spec}, {agent.action_spec})"
        )
    return template


def _open_storage(root: Path, template: Dataset, episodes: queue.Queue) -> TransitionStore:
    try:
        return TransitionStore.like(root, template, on_episode=lambda episode, record: episodes.put((episode, record)))
    except (StoreError, DatasetError, OSError) as exc:
        raise RunError(f"storage {root}: {exc}") from None
