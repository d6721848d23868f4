"""Learning curves of one or more runs, side by side, as one PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from trainer.checkpoint import RunError  # noqa: E402
from trainer.metrics import METRICS_NAME, read_metrics  # noqa: E402

# (metric, panel title, smoothing window in points); panels without data in any run are left out.
PANELS = [
    ("eval/success_rate", "evaluation success rate", 1),
    ("eval/return", "evaluation return", 1),
    ("episode/success", "training episode success", 10),
    ("episode/return", "training episode return", 10),
    ("q_data", "Q on replayed actions", 1),
    ("replay/offline_fraction", "offline share of each batch", 1),
    ("ratio/w_online", "density ratio on online data", 1),
    ("alpha", "entropy temperature α", 1),
    ("critic_loss", "critic loss", 1),
    ("cql/gap", "CQL gap (logsumexp Q − Q on data)", 1),
]


def plot_runs(runs: list[Path], out: Path) -> Path:
    series = {}
    for run in runs:
        if not (run / METRICS_NAME).is_file():
            raise RunError(f"{run}: no {METRICS_NAME}; not a trainer run directory")
        series[run] = read_metrics(run)
    panels = [p for p in PANELS if any(p[0] in s for s in series.values())]
    if not panels:
        raise RunError("none of the runs has logged any metric yet")
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    for ax, (name, title, window) in zip(axes.flat, panels):
        for run, metrics in series.items():
            if name in metrics:
                steps, values = metrics[name]
                ax.plot(steps, _smooth(np.asarray(values), window), label=run.name)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize="small")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(values) < window:
        return values
    cumulative = np.cumsum(np.insert(values, 0, 0.0))
    head = cumulative[1:window] / np.arange(1, window)
    return np.concatenate([head, (cumulative[window:] - cumulative[:-window]) / window])
