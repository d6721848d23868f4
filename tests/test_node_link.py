"""The node's trainer link from its parameters (robot_node/node_link.py), in-process: what the
parameters become, the one-line configuration errors, and a real ZmqTrainerLink that starts,
says so in the node's log and closes with its spool kept."""

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from node_helpers import ListLogger, constant_model, wait_until

from robot_node.keys import generate
from robot_node.link import ZmqTrainerLink
from robot_node.link_interface import Transition
from robot_node.node_link import LINK_LOGGER, NoTrainerLink, link_config, make_link
from robot_node.params import ConfigError, NodeParams
from robot_node.policy import load_policy_file
from robot_node.spool import Spool
from trainer.link import ServerConfig, TrainerServer
from trainer.transition_store import TransitionStore


@pytest.fixture(autouse=True)
def restore_link_logging():
    """make_link forwards the `robot_node` loggers to the node's logger; undo it for later tests."""
    library = logging.getLogger(LINK_LOGGER)
    handlers, level = list(library.handlers), library.level
    yield
    library.handlers[:] = handlers
    library.setLevel(level)


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "policy.onnx"
    path.write_bytes(constant_model([0.0] * 4, version=7))
    return load_policy_file(path)


@pytest.fixture
def keys(tmp_path):
    generate("trainer", tmp_path / "keys")
    generate("arm1", tmp_path / "keys")
    return tmp_path / "keys"


def params(**values) -> NodeParams:
    return NodeParams.from_values({"model_path": "policy.onnx", "robot_id": "arm1", **values})


def secure(keys: Path, **values) -> NodeParams:
    return params(
        **{
            "trainer_endpoint": "tcp://127.0.0.1:1",  # nothing listens there: the link keeps trying
            "secret_key_file": str(keys / "arm1.key_secret"),
            "trainer_key_file": str(keys / "trainer.key"),
            **values,
        }
    )


def test_parameters_become_the_links_settings(tmp_path, keys, model, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    config = link_config(
        secure(keys, image_codec="jpeg", jpeg_quality=75, spool_max_mb=2.0, spool_sync=True, link_heartbeat_s=0.2, link_timeout_s=1.5),
        model,
    )
    assert config.spool_dir == str(tmp_path / ".ros/o2o_rl/spool/arm1")  # the default, per robot id
    assert (config.codec.name, config.codec.jpeg_quality) == ("jpeg", 75)
    assert config.spool_max_bytes == 2 * 2**20 and config.spool_sync
    assert (config.heartbeat_s, config.peer_timeout_s) == (0.2, 1.5)
    assert (config.secret_key, config.trainer_key, config.insecure) == (str(keys / "arm1.key_secret"), str(keys / "trainer.key"), False)
    # The trainer must speak the model's specs; the version the node starts with is not news.
    assert (config.observation_spec, config.action_spec, config.weights_version) == (model.observation_spec, model.action_spec, 7)


def test_an_empty_endpoint_runs_without_a_trainer(model):
    logger = ListLogger()
    link = make_link(params(), model, logger)
    assert isinstance(link, NoTrainerLink) and not link.status().connected
    assert any("running without a trainer" in line for line in logger.lines)


def spool_under_a_file(tmp_path: Path, keys: Path) -> dict:
    (tmp_path / "file").write_text("not a directory")
    return dict(spool_dir=str(tmp_path / "file"))


@pytest.mark.parametrize(
    "change, problem",
    [
        (lambda tmp, keys: dict(secret_key_file="", trainer_key_file=""), "secret_key_file and trainer_key_file are not"),
        (lambda tmp, keys: dict(secret_key_file="/nonexistent/arm1.key_secret"), "secret_key_file /nonexistent/arm1.key_secret: no such key file"),
        (lambda tmp, keys: dict(trainer_key_file="/nonexistent/trainer.key"), "trainer_key_file /nonexistent/trainer.key: no such key file"),
        (lambda tmp, keys: dict(secret_key_file=str(keys / "arm1.key")), "secret_key_file .*arm1.key: holds no secret key"),
        (lambda tmp, keys: dict(trainer_endpoint="tcp://127.0.0.1"), "trainer link: endpoint 'tcp://127.0.0.1' is not an address to connect to"),
        (spool_under_a_file, "spool_dir: cannot keep a spool in"),
    ],
)
def test_configuration_errors_are_one_line_config_errors(tmp_path, keys, model, change, problem):
    with pytest.raises(ConfigError, match=problem) as error:
        make_link(secure(keys, **change(tmp_path, keys)), model, ListLogger())
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "values, problem",
    [
        (dict(image_codec="webp"), "image_codec must be one of"),
        (dict(jpeg_quality=0), "jpeg_quality must be 1-100"),
        (dict(robot_id="arm 1/left"), "robot_id 'arm 1/left'"),
        (dict(link_timeout_s=0.5), "link_timeout_s .* must exceed link_heartbeat_s"),
        (dict(spool_max_mb=0.0), "spool_max_mb must be positive"),
    ],
)
def test_link_parameters_are_validated(values, problem):
    with pytest.raises(ConfigError, match=problem):
        params(**values)


def transition(step: int) -> Transition:
    return Transition(
        episode_id="arm1-test-000001", step=step, image=np.zeros((64, 64, 3), np.uint8), state=np.zeros(2, np.float32),
        action=np.zeros(4, np.float32), reward=0.0, terminal=False, truncated=False, policy_version=7, stamp=0.0,
    )


def test_a_secure_link_starts_logs_through_the_node_and_keeps_its_spool_when_closed(tmp_path, keys, model):
    logger = ListLogger()
    link = make_link(secure(keys, spool_dir=str(tmp_path / "spool")), model, logger)
    try:
        assert isinstance(link, ZmqTrainerLink)
        assert not link.status().connected and "tcp://127.0.0.1:1" in link.status().detail
        assert any("trainer link to tcp://127.0.0.1:1 as arm1 (CURVE, png images)" in line for line in logger.lines)
        logging.getLogger("robot_node.link").info("a line from the link")
        assert logger.lines[-1] == "a line from the link"  # the link's log goes to the node's logger
        assert all(link.submit(transition(step)) for step in range(3))
    finally:
        link.close()  # what PolicyNode.cleanup does when the node shuts down
    spool = Spool(tmp_path / "spool" / "arm1")
    assert len(spool) == 3  # unacknowledged, kept for the next start
    spool.close()


def test_insecure_needs_no_keys_and_warns_at_start_up(tmp_path, model):
    logger = ListLogger()
    link = make_link(params(trainer_endpoint="tcp://127.0.0.1:1", insecure=True, spool_dir=str(tmp_path)), model, logger)
    link.close()
    assert any("WITHOUT authentication or encryption" in line for line in logger.lines)


def test_a_node_with_an_allowed_key_costs_the_trainer_no_failed_handshake(tmp_path, keys, model):
    """The node once checked its address with a throwaway socket that connected without keys:
    the trainer counted and logged a failed CURVE handshake at every node start."""
    (keys / "robots").mkdir()
    shutil.copy(keys / "arm1.key", keys / "robots")
    store = TransitionStore(
        tmp_path / "trainer", observation_spec=model.observation_spec, action_spec=model.action_spec,
        task="t", env_id="e", max_episode_steps=10, sync=False,
    )
    server = TrainerServer(ServerConfig(bind="tcp://127.0.0.1:0", secret_key=str(keys / "trainer.key_secret"), allow_dir=str(keys / "robots")), store)
    try:
        link = make_link(secure(keys, trainer_endpoint=server.endpoint, spool_dir=str(tmp_path / "spool")), model, ListLogger())
        wait_until(lambda: link.status().connected, 30, "the node's link to connect")
        link.close()
        wait_until(lambda: not server.status()["robots"] or server.counters["robots_lost"], 30, "the trainer to see the robot go")
        assert server.status()["counters"]["refused"] == 0, server.status()["counters"]
    finally:
        server.close()
