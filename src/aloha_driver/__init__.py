"""ALOHA 2 in MuJoCo (scene, simulator, offscreen cameras) and its ROS 2 driver node."""
import os

# MuJoCo picks its OpenGL backend when first imported; the default (GLFW) needs a display that
# robots' computers and CI machines lack. EGL renders headless (so does MUJOCO_GL=osmesa).
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
