# make demo | make test | make eval (POLICY= TASK= EPISODES= SEED= EMBODIMENT=): each sets up .venv/ first (idempotent; only changed steps rerun).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stamps
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl

INTERFACE_FILES := $(wildcard msg/*.msg srv/*.srv action/*.action) CMakeLists.txt package.xml
TASK ?= pick
EMBODIMENT ?= aloha2
POLICY ?= zero_shot
EPISODES ?= 50
SEED ?= 0
PYTEST_ARGS ?=

.PHONY: setup demo eval test test-quick clean
setup: $(STAMP)/package

$(STAMP)/system: scripts/setup_env.sh
	@bash scripts/setup_env.sh system && mkdir -p $(STAMP) && touch $@
$(STAMP)/deps: $(STAMP)/system requirements.txt scripts/fix_ros_wheel_cmake.py
	@bash scripts/setup_env.sh deps && touch $@
$(STAMP)/interfaces: $(STAMP)/deps $(INTERFACE_FILES)
	@bash scripts/setup_env.sh interfaces && touch $@
$(STAMP)/package: $(STAMP)/interfaces pyproject.toml
	@bash scripts/setup_env.sh package && touch $@
# Robot driver messages for the tests only (build/test_interfaces/, see test/interfaces/README.md).
TEST_INTERFACE_FILES := $(wildcard test/interfaces/*/CMakeLists.txt test/interfaces/*/package.xml \
	test/interfaces/*/msg/*.msg test/interfaces/*/srv/*.srv test/interfaces/*/action/*.action)
$(STAMP)/test_interfaces: $(STAMP)/deps $(TEST_INTERFACE_FILES)
	@bash scripts/setup_env.sh test_interfaces && touch $@

demo: setup
	$(VENV)/bin/bimanual-vla demo --task $(TASK) --embodiment $(EMBODIMENT) --policy $(POLICY)

eval: setup
	$(VENV)/bin/bimanual-vla evaluate --policy $(POLICY) --task $(TASK) --episodes $(EPISODES) \
		--seed $(SEED) --embodiment $(EMBODIMENT)

# Shared-memory segments left by SIGKILLed processes of an earlier run can stall Fast DDS: clean them.
test: setup $(STAMP)/test_interfaces
	-@$(PY) $(VENV)/tools/fastdds/fastdds.py shm clean >/dev/null 2>&1
	$(PY) -m pytest $(PYTEST_ARGS)

test-quick: setup $(STAMP)/test_interfaces
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf build $(VENV)
