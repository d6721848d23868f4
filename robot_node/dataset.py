"""The on-disk episode dataset: offline data from the simulator and recordings from the robot.

One format for everything the trainer learns from (docs/ARCHITECTURE.md, "Episode dataset"):

    DIR/manifest.json               task, specs, counts, success rate, one record per episode
    DIR/episodes/episode_000000.npz one compressed npz per episode

Each frame is stored once per episode (T+1 observations for T steps), so a transition's next
observation is the following row, never a second copy. It lives on the robot side because it
is light (numpy only) and the simulator, the trainer and the robot all read or write it.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robot_node.spec import ActionSpec, ObservationSpec, SpecError

FORMAT_NAME = "o2o_rl/episodes"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
EPISODE_DIR = "episodes"


class DatasetError(Exception):
    """A dataset cannot be used; the message names the file and the problem."""


@dataclass
class Episode:
    """One episode of T steps. Row t of `frames`/`states` is the observation before action t."""

    frames: np.ndarray  # uint8 [T+1, H, W, 3], RGB
    states: np.ndarray  # float32 [T+1, S]
    actions: np.ndarray  # float32 [T, A], normalised
    rewards: np.ndarray  # float32 [T]
    terminals: np.ndarray  # bool [T]: the task ended at step t, do not bootstrap from t+1
    truncations: np.ndarray  # bool [T]: cut short at step t (time limit, reset), do bootstrap
    policy_versions: np.ndarray | None = None  # int64 [T]: which policy acted (robot recordings)

    @property
    def length(self) -> int:
        return int(self.actions.shape[0])

    def validate(self, observation_spec: ObservationSpec, action_spec: ActionSpec) -> None:
        """Raise DatasetError naming the first field whose shape, dtype or values are wrong."""
        t = self.length
        if t < 1:
            raise DatasetError("episode has no steps")
        expected = {
            "frames": ((t + 1, *observation_spec.image_shape), np.uint8),
            "states": ((t + 1, observation_spec.state_dim), np.float32),
            "actions": ((t, action_spec.dim), np.float32),
            "rewards": ((t,), np.float32),
            "terminals": ((t,), np.bool_),
            "truncations": ((t,), np.bool_),
        }
        if self.policy_versions is not None:
            expected["policy_versions"] = ((t,), np.int64)
        for name, (shape, dtype) in expected.items():
            value = getattr(self, name)
            if not isinstance(value, np.ndarray) or value.shape != shape or value.dtype != dtype:
                got = f"{value.dtype}{list(value.shape)}" if isinstance(value, np.ndarray) else type(value).__name__
                raise DatasetError(f"{name}: expected {np.dtype(dtype)}{list(shape)}, got {got}")
        for name in ("states", "actions", "rewards"):
            if not np.isfinite(getattr(self, name)).all():
                raise DatasetError(f"{name}: contains NaN or inf")
        slack = 1e-6
        if (self.actions < action_spec.low - slack).any() or (self.actions > action_spec.high + slack).any():
            raise DatasetError(f"actions: outside [{action_spec.low}, {action_spec.high}]")
        if (self.terminals[:-1] | self.truncations[:-1]).any():
            raise DatasetError("terminals/truncations: an episode may only end at its last step")

    def arrays(self) -> dict[str, np.ndarray]:
        names = ["frames", "states", "actions", "rewards", "terminals", "truncations"]
        if self.policy_versions is not None:
            names.append("policy_versions")
        return {name: getattr(self, name) for name in names}


@dataclass(frozen=True)
class EpisodeRecord:
    """The manifest's line for one episode."""

    file: str  # relative to the dataset root
    length: int
    episode_return: float
    success: bool
    source: str  # who acted: "scripted", "random", "robot", "policy", ...
    seed: int | None = None
    robot_id: str | None = None  # recorded on a robot: which one, and its episode id there
    episode_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        line = {
            "file": self.file,
            "length": self.length,
            "return": self.episode_return,
            "success": self.success,
            "source": self.source,
            "seed": self.seed,
        }
        if self.robot_id is not None:
            line.update(robot_id=self.robot_id, episode_id=self.episode_id)
        return line

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EpisodeRecord:
        return cls(
            file=str(data["file"]),
            length=int(data["length"]),
            episode_return=float(data["return"]),
            success=bool(data["success"]),
            source=str(data["source"]),
            seed=None if data.get("seed") is None else int(data["seed"]),
            robot_id=None if data.get("robot_id") is None else str(data["robot_id"]),
            episode_id=None if data.get("episode_id") is None else str(data["episode_id"]),
        )


@dataclass
class Dataset:
    """An opened dataset: the manifest in memory, episodes read from disk on demand."""

    root: Path
    task: str
    env_id: str
    observation_spec: ObservationSpec
    action_spec: ActionSpec
    max_episode_steps: int
    records: list[EpisodeRecord]
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_transitions(self) -> int:
        return sum(r.length for r in self.records)

    @property
    def success_rate(self) -> float:
        return _success_rate(self.records)

    def read(self, index: int) -> Episode:
        """Read and validate one episode; a damaged file raises DatasetError naming it."""
        record = self.records[index]
        path = self.root / record.file
        episode = read_episode(path)
        try:
            episode.validate(self.observation_spec, self.action_spec)
        except DatasetError as exc:
            raise DatasetError(f"{path}: {exc}") from None
        if episode.length != record.length:
            raise DatasetError(f"{path}: {episode.length} steps, manifest says {record.length}")
        return episode

    def __iter__(self) -> Iterator[Episode]:
        return (self.read(i) for i in range(len(self)))


def read_episode(path: Path) -> Episode:
    """Read one episode file without checking it against a spec."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise DatasetError(f"{path}: episode file is missing") from None
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise DatasetError(f"{path}: corrupted episode file ({exc})") from None
    required = ("frames", "states", "actions", "rewards", "terminals", "truncations")
    missing = [name for name in required if name not in arrays]
    if missing:
        raise DatasetError(f"{path}: episode file lacks {', '.join(missing)}")
    return Episode(**{name: arrays[name] for name in (*required, "policy_versions") if name in arrays})


def open_dataset(root: str | os.PathLike[str]) -> Dataset:
    """Open a dataset directory, checking the manifest and that every episode file is present."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset directory")
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise DatasetError(f"{root}: no {MANIFEST_NAME}; not an o2o_rl dataset (create one with `o2o-sim collect`)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{manifest_path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise DatasetError(f"{manifest_path}: not an {FORMAT_NAME} manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise DatasetError(f"{manifest_path}: format version {manifest.get('version')}, this reader knows {FORMAT_VERSION}")
    try:
        dataset = Dataset(
            root=root,
            task=str(manifest["task"]),
            env_id=str(manifest["env_id"]),
            observation_spec=ObservationSpec.from_dict(manifest["observation_spec"]),
            action_spec=ActionSpec.from_dict(manifest["action_spec"]),
            max_episode_steps=int(manifest["max_episode_steps"]),
            records=[EpisodeRecord.from_dict(r) for r in manifest["episodes"]],
            meta=dict(manifest.get("meta", {})),
        )
    except (KeyError, TypeError, ValueError, SpecError) as exc:
        raise DatasetError(f"{manifest_path}: malformed manifest ({type(exc).__name__}: {exc})") from None
    missing = [r.file for r in dataset.records if not (root / r.file).is_file()]
    if missing:
        raise DatasetError(f"{root}: {len(missing)} episode file(s) listed in the manifest are missing, first {missing[0]}")
    return dataset


class DatasetWriter:
    """Writes episodes one at a time; the manifest is rewritten atomically after each, so an
    interrupted collection leaves a valid dataset of the episodes finished so far."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        task: str,
        env_id: str,
        observation_spec: ObservationSpec,
        action_spec: ActionSpec,
        max_episode_steps: int,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.root = Path(root)
        if (self.root / MANIFEST_NAME).exists():
            raise DatasetError(f"{self.root}: already holds a dataset; choose a new directory")
        (self.root / EPISODE_DIR).mkdir(parents=True, exist_ok=True)
        self.dataset = Dataset(
            root=self.root,
            task=task,
            env_id=env_id,
            observation_spec=observation_spec,
            action_spec=action_spec,
            max_episode_steps=max_episode_steps,
            records=[],
            meta=dict(meta or {}),
        )
        self._write_manifest()

    @classmethod
    def append_to(cls, root: str | os.PathLike[str]) -> DatasetWriter:
        """Continue an existing dataset (a restarted recorder): new episodes follow its last one."""
        writer = cls.__new__(cls)
        writer.root = Path(root)
        writer.dataset = open_dataset(root)
        return writer

    def add(
        self,
        episode: Episode,
        *,
        source: str,
        success: bool,
        seed: int | None = None,
        robot_id: str | None = None,
        episode_id: str | None = None,
    ) -> EpisodeRecord:
        episode.validate(self.dataset.observation_spec, self.dataset.action_spec)
        name = f"{EPISODE_DIR}/episode_{len(self.dataset.records):06d}.npz"
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **episode.arrays())
        _atomic_write(self.root / name, buffer.getvalue())
        record = EpisodeRecord(
            file=name,
            length=episode.length,
            episode_return=float(episode.rewards.sum()),
            success=bool(success),
            source=source,
            seed=seed,
            robot_id=robot_id,
            episode_id=episode_id,
        )
        self.dataset.records.append(record)
        try:
            self._write_manifest()
        except BaseException:
            self.dataset.records.pop()  # not in the dataset: a retry writes the same index again
            raise
        return record

    def _write_manifest(self) -> None:
        d = self.dataset
        by_source = Counter(r.source for r in d.records)
        manifest = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "task": d.task,
            "env_id": d.env_id,
            "observation_spec": d.observation_spec.to_dict(),
            "action_spec": d.action_spec.to_dict(),
            "max_episode_steps": d.max_episode_steps,
            "counts": {
                "episodes": len(d.records),
                "transitions": d.num_transitions,
                "successes": sum(r.success for r in d.records),
                "by_source": dict(by_source),
            },
            "success_rate": d.success_rate,
            "success_rate_by_source": {
                source: _success_rate([r for r in d.records if r.source == source]) for source in by_source
            },
            "meta": d.meta,
            "episodes": [r.to_dict() for r in d.records],
        }
        _atomic_write(self.root / MANIFEST_NAME, (json.dumps(manifest, indent=1) + "\n").encode())


def _success_rate(records: list[EpisodeRecord]) -> float:
    return sum(r.success for r in records) / len(records) if records else 0.0


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
