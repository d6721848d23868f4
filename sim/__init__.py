"""The MuJoCo manipulator that stands in for the robot: environments, data collection, ROS bridge.

Importing `sim` registers the gymnasium environments (`o2o_rl/PickPlace-v0`,
`o2o_rl/DrawerGrasp-v0`) and picks an offscreen OpenGL backend for MuJoCo when MUJOCO_GL is
unset, which must happen before mujoco is first imported.
"""

from sim.gl import select_backend

select_backend()

import gymnasium  # noqa: E402  (after the GL backend is chosen)

from sim.tasks import TASKS  # noqa: E402

for _task in TASKS.values():
    if _task.env_id not in gymnasium.registry:
        gymnasium.register(
            id=_task.env_id,
            entry_point="sim.env:ManipulationEnv",
            max_episode_steps=_task.max_episode_steps,
            kwargs={"task": _task.name},
        )
