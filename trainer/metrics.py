"""Training metrics to CSV (long format: step, seconds, name, value) and TensorBoard."""

from __future__ import annotations

import csv
import math
import time
from collections import defaultdict
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

METRICS_NAME = "metrics.csv"


class MetricsLogger:
    def __init__(self, run_dir: Path, append: bool = False) -> None:
        self.path = run_dir / METRICS_NAME
        exists = append and self.path.is_file()
        self._file = self.path.open("a" if exists else "w", newline="")
        self._csv = csv.writer(self._file)
        if not exists:
            self._csv.writerow(["step", "seconds", "name", "value"])
        self._tensorboard = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self._start = time.monotonic()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        seconds = round(time.monotonic() - self._start, 3)
        for name, value in metrics.items():
            self._csv.writerow([step, seconds, name, f"{value:.6g}"])
            self._tensorboard.add_scalar(name, value, step)
        self._file.flush()

    def close(self) -> None:
        self._tensorboard.close()
        self._file.close()


def read_metrics(run_dir: Path) -> dict[str, tuple[list[int], list[float]]]:
    """name -> (steps, values) from a run's metrics.csv."""
    path = Path(run_dir) / METRICS_NAME
    series: dict[str, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            value = float(row["value"])
            if math.isfinite(value):
                steps, values = series[row["name"]]
                steps.append(int(row["step"]))
                values.append(value)
    return dict(series)


class RunningMean:
    """Averages of per-update metrics between two log lines."""

    def __init__(self) -> None:
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)

    def add(self, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self._sums[name] += value
            self._counts[name] += 1

    def pop(self) -> dict[str, float]:
        out = {name: self._sums[name] / self._counts[name] for name in self._sums}
        self._sums.clear()
        self._counts.clear()
        return out
