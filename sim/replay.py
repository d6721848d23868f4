"""Look at an episode: its frames tiled into one image, or played as a video (OpenCV)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from robot_node.dataset import Episode

IMAGE_SUFFIXES = (".png", ".jpg")
VIDEO_SUFFIXES = (".mp4", ".avi")
REWARD_COLOUR = (40, 200, 40)  # RGB border of a frame reached with reward 1


def annotated_frames(episode: Episode, scale: int) -> list[np.ndarray]:
    """Every observation, enlarged, with its step number; green-framed when it earned reward."""
    frames = []
    for t, frame in enumerate(episode.frames):
        big = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
        if t > 0 and episode.rewards[t - 1] > 0:
            cv2.rectangle(big, (0, 0), (big.shape[1] - 1, big.shape[0] - 1), REWARD_COLOUR, max(2, scale))
        cv2.putText(big, str(t), (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1, cv2.LINE_AA)
        frames.append(big)
    return frames


def frame_grid(frames: list[np.ndarray], columns: int = 10) -> np.ndarray:
    """Tile equally sized frames row by row, a black line between them; the last row is padded."""
    framed = [cv2.copyMakeBorder(f, 0, 1, 0, 1, cv2.BORDER_CONSTANT, value=0) for f in frames]
    rows = -(-len(framed) // columns)
    blank = np.zeros_like(framed[0])
    padded = framed + [blank] * (rows * columns - len(framed))
    return np.vstack([np.hstack(padded[r * columns : (r + 1) * columns]) for r in range(rows)])


def write_replay(path: str | Path, episode: Episode, every: int = 1, scale: int = 2) -> Path:
    """Write the episode as an image strip (.png, .jpg) or a 10 frames/s video (.mp4, .avi)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES + VIDEO_SUFFIXES:
        raise ValueError(f"{path}: write .png or .jpg for a strip, .mp4 or .avi for a video")
    if every < 1:
        raise ValueError(f"--every must be at least 1, got {every}")
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = [cv2.cvtColor(f, cv2.COLOR_RGB2BGR) for f in annotated_frames(episode, scale)]
    if suffix in IMAGE_SUFFIXES:
        ok = cv2.imwrite(str(path), frame_grid(frames[::every]))
    else:
        height, width = frames[0].shape[:2]
        fourcc = cv2.VideoWriter_fourcc(*("mp4v" if suffix == ".mp4" else "MJPG"))
        video = cv2.VideoWriter(str(path), fourcc, 10.0, (width, height))
        ok = video.isOpened()
        for frame in frames[::every] if ok else []:
            video.write(frame)
        video.release()
    if not ok:
        raise OSError(f"{path}: OpenCV could not write this file")
    return path
