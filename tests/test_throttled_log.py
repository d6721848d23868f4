"""The one throttled log of bad input (robot_node/throttled_log.py) and the link's Refusals on top."""

import logging

from robot_node.counters import Counters, Refusals
from robot_node.throttled_log import ThrottledLog


class Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def warning(self, message: str) -> None:
        self.lines.append(message)


def test_each_kind_is_logged_once_per_interval_with_the_count_left_unlogged():
    now = [0.0]
    logger = Lines()
    log = ThrottledLog(logger, 5.0, lambda: now[0])
    log.warning("bad_images", "dropped an image")
    log.warning("bad_images", "dropped another image")
    log.warning("bad_rewards", "dropped a reward")
    log.warning("bad_images", "dropped three images", n=3)
    assert logger.lines == ["dropped an image", "dropped a reward"]
    now[0] = 4.9
    log.warning("bad_images", "still within the interval")
    now[0] = 5.0
    log.warning("bad_images", "dropped an image")
    log.warning("bad_rewards", "dropped a reward")
    assert logger.lines[2:] == ["dropped an image (5 more since the last report)", "dropped a reward"]


def test_refusals_count_every_item_and_log_through_the_throttle():
    counters = Counters()
    records: list[str] = []
    logger = logging.getLogger("test_throttled_log")
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger.addHandler(handler)
    try:
        refusals = Refusals(counters, logger)
        refusals.refuse("shape", "image is 32x32, not 64x64")
        refusals.refuse("shape", "image is 32x32, not 64x64", n=4)
        refusals.refuse("not_finite", "reward is NaN (100% sure)")
    finally:
        logger.removeHandler(handler)
    assert counters.snapshot() == {"refused.shape": 5, "refused.not_finite": 1}
    assert refusals.total() == 6
    assert records == ["refused (shape): image is 32x32, not 64x64", "refused (not_finite): reward is NaN (100% sure)"]
