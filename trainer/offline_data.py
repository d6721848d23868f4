"""Loading an offline episode dataset into a frame store, refusing anything unusable.

The dataset format and its checks (manifest, shapes, dtypes, NaN, bounds) are
robot_node.dataset's; this adds what the trainer needs on top: the specs must be the ones the
agent expects, and there must be something to learn from.
"""

from __future__ import annotations

import os

from tqdm import tqdm

from robot_node.dataset import Dataset, DatasetError, open_dataset
from robot_node.spec import ActionSpec, ObservationSpec
from trainer.frame_store import FrameStore


def load_offline(
    root: str | os.PathLike[str],
    observation_spec: ObservationSpec | None = None,
    action_spec: ActionSpec | None = None,
    progress: bool = True,
) -> tuple[Dataset, FrameStore]:
    """Open and read every episode of a dataset; raises DatasetError naming the problem."""
    dataset = open_dataset(root)
    if observation_spec is not None and dataset.observation_spec != observation_spec:
        theirs, ours = dataset.observation_spec.to_json(), observation_spec.to_json()
        raise DatasetError(f"{root}: observation spec {theirs} differs from the agent's {ours}")
    if action_spec is not None and dataset.action_spec != action_spec:
        raise DatasetError(
            f"{root}: action spec {dataset.action_spec.to_json()} differs from the agent's {action_spec.to_json()}"
        )
    if dataset.num_transitions == 0:
        raise DatasetError(f"{root}: the dataset holds no transitions")
    frames = sum(record.length + 1 for record in dataset.records)
    store = FrameStore(
        frames, dataset.observation_spec.image_shape, dataset.observation_spec.state_dim, dataset.action_spec.dim
    )
    for episode in tqdm(
        dataset, total=len(dataset), desc="loading episodes", unit="ep", disable=not progress, leave=False
    ):
        store.add_episode(episode)
    return dataset, store
