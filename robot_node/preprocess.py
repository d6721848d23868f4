"""Camera image -> policy input: decode the ROS Image, crop to the model's aspect, resize.

Runs once per control tick on the newest image only. Cropping before resizing keeps the
geometry the policy was trained on (a centre crop, not a stretch) whatever the camera delivers.
"""

from __future__ import annotations

import cv2
import numpy as np

from robot_node.ros.messages import Image

ENCODINGS = ("rgb8", "bgr8")


class ImageError(ValueError):
    """An Image message the node cannot use; the message says why."""


def check_image(msg: Image) -> None:
    """Cheap header checks, done on arrival so that a bad image never becomes the newest."""
    if msg.encoding not in ENCODINGS:
        raise ImageError(f"unsupported encoding {msg.encoding!r} (expected one of {ENCODINGS})")
    if msg.height <= 0 or msg.width <= 0:
        raise ImageError(f"empty image {msg.width}x{msg.height}")
    if msg.step < 3 * msg.width:
        raise ImageError(f"step {msg.step} is shorter than a row of {msg.width} pixels")
    if len(msg.data) < msg.step * msg.height:
        raise ImageError(f"data has {len(msg.data)} bytes, {msg.step * msg.height} expected")


def to_policy_input(msg: Image, size: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, 3] RGB at `size` = (H, W), C-contiguous, ready to batch."""
    check_image(msg)
    rows = np.frombuffer(msg.data, np.uint8, count=msg.step * msg.height).reshape(msg.height, msg.step)
    image = rows[:, : 3 * msg.width].reshape(msg.height, msg.width, 3)
    image = resize(center_crop(image, size[1] / size[0]), size)
    if msg.encoding == "bgr8":
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(image)


def center_crop(image: np.ndarray, aspect: float) -> np.ndarray:
    """The largest centred window with width / height = aspect."""
    h, w = image.shape[:2]
    if w > round(h * aspect):
        new_w = max(1, round(h * aspect))
        x0 = (w - new_w) // 2
        return image[:, x0 : x0 + new_w]
    new_h = max(1, round(w / aspect))
    y0 = (h - new_h) // 2
    return image[y0 : y0 + new_h]


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    shrinking = image.shape[0] > h
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
