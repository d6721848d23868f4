"""What colcon's ament_python build needs beyond pyproject.toml: the ament index marker,
package.xml, launch files and default parameters under share/o2o_rl."""
from glob import glob

from setuptools import setup

PACKAGE = "o2o_rl"

setup(
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.*")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
    ],
)
