"""The node's trainer link, built from its parameters: the one place that decides which link runs.

With an empty `trainer_endpoint` the robot runs its policy alone (`NoTrainerLink`). Otherwise it
gets the ZeroMQ link (robot_node/link.py): CURVE-authenticated unless `insecure` is set, its
transitions spooled in `<spool_dir>/<robot_id>` until the trainer acknowledges them, images
encoded as `image_codec`. Everything that can be wrong in that configuration (a missing key
file, a malformed endpoint, a spool directory that cannot be written) is a ConfigError with one
line naming the parameter, raised at configure, before the node commands anything.
"""

from __future__ import annotations

import logging
from pathlib import Path


from robot_node.keys import KeyFileError, load_keypair, load_public
from robot_node.link import LinkConfig, LinkConfigError, ZmqTrainerLink
from robot_node.link_interface import LinkStatus, PolicyWeights, TrainerLink, Transition
from robot_node.params import ConfigError, NodeParams
from robot_node.policy import PolicyRunner
from robot_node.protocol import Codec
from robot_node.ros.port import Logger

# The link and its spool log through Python's logging under this name; the node forwards it.
LINK_LOGGER = "robot_node"


class NoTrainerLink:
    """The link when `trainer_endpoint` is empty: the robot runs its policy, transitions are
    dropped and counted (visible in /diagnostics), and no new weights ever arrive."""

    def __init__(self) -> None:
        self.counters = {"dropped_no_trainer": 0}

    def submit(self, transition: Transition) -> bool:
        self.counters["dropped_no_trainer"] += 1
        return False

    def latest_weights(self, newer_than: int) -> PolicyWeights | None:
        return None

    def status(self) -> LinkStatus:
        return LinkStatus(False, "no trainer_endpoint: transitions are dropped", dict(self.counters))

    def close(self) -> None:
        pass


def link_config(params: NodeParams, model: PolicyRunner) -> LinkConfig:
    """The ZeroMQ link's settings: the node's parameters, and the specs and version of the model it
    starts with (the trainer must speak those specs; weights up to that version are not news)."""
    return LinkConfig(
        endpoint=params.trainer_endpoint,
        robot_id=params.robot_id,
        spool_dir=str(Path(params.spool_dir).expanduser() / params.robot_id),
        observation_spec=model.observation_spec,
        action_spec=model.action_spec,
        secret_key=params.secret_key_file or None,
        trainer_key=params.trainer_key_file or None,
        insecure=params.insecure,
        codec=Codec(params.image_codec, params.jpeg_quality),
        spool_max_bytes=int(params.spool_max_mb * 2**20),
        spool_sync=params.spool_sync,
        heartbeat_s=params.link_heartbeat_s,
        peer_timeout_s=params.link_timeout_s,
        weights_version=model.version,
    )


def make_link(params: NodeParams, model: PolicyRunner, logger: Logger) -> TrainerLink:
    """The link the node runs with. Raises ConfigError with a one-line reason."""
    if not params.trainer_endpoint:
        logger.warning("trainer_endpoint is empty: running without a trainer, transitions are dropped")
        return NoTrainerLink()
    if not params.insecure:
        _check_keys(params)
    config = link_config(params, model)
    forward_logs(logger)
    try:
        link = ZmqTrainerLink(config)
    except LinkConfigError as exc:
        raise ConfigError(f"trainer link: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"spool_dir: cannot keep a spool in {config.spool_dir}: {exc.strerror or exc}") from None
    security = "WITHOUT authentication (insecure)" if params.insecure else "CURVE"
    logger.info(
        f"trainer link to {config.endpoint} as {config.robot_id} ({security}, {config.codec.name} images), "
        f"spool {config.spool_dir}"
    )
    return link


def _check_keys(params: NodeParams) -> None:
    """Both key files exist and hold what they should; the error names the parameter."""
    if not (params.secret_key_file and params.trainer_key_file):
        raise ConfigError(
            "trainer_endpoint is set but secret_key_file and trainer_key_file are not: give this robot's "
            "NAME.key_secret and the trainer's NAME.key (o2o-keys generate), or set insecure:=true"
        )
    for name, load in (("secret_key_file", load_keypair), ("trainer_key_file", load_public)):
        try:
            load(getattr(params, name))
        except KeyFileError as exc:
            raise ConfigError(f"{name} {exc}") from None


class _ToNodeLogger(logging.Handler):
    """Python log records of the link (connection, refusals, spool) into the node's logger, so
    they appear in the node's log, under rclpy in the ROS console, with the node's name."""

    def __init__(self, logger: Logger) -> None:
        super().__init__(logging.INFO)
        self.node_logger = logger

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        if record.levelno >= logging.ERROR:
            self.node_logger.error(text)
        elif record.levelno >= logging.WARNING:
            self.node_logger.warning(text)
        else:
            self.node_logger.info(text)


def forward_logs(logger: Logger) -> None:
    """Send the link's log records to `logger` (replacing an earlier node's forwarding)."""
    library = logging.getLogger(LINK_LOGGER)
    for handler in [h for h in library.handlers if isinstance(h, _ToNodeLogger)]:
        library.removeHandler(handler)
    library.addHandler(_ToNodeLogger(logger))
    library.setLevel(logging.INFO)
