# flashrt_ros. Two commands for people: `make demo` and `make test` (README.md).
# Internal targets: venv (scripts/bootstrap.sh), build (colcon, scripts/build.sh), env, clean,
# parity (flashrt_ros.models.lerobot against LeRobot 0.6.1 itself, in its own Python 3.12 venv).
# Every target skips work already done: the venv is re-made only when requirements.txt,
# constraints.txt or the bootstrap script change; colcon runs only when the sources changed.

SHELL := /bin/bash
.DEFAULT_GOAL := test

VENV ?= $(or $(FLASHRT_VENV),.venv)
export FLASHRT_VENV := $(abspath $(VENV))
export PYTHON ?= python3
# Extra pytest arguments, e.g. make test TEST_ARGS='-k chunk -x'
TEST_ARGS ?=
# Extra demo arguments, e.g. make demo DEMO_ARGS='--help'
DEMO_ARGS ?=
# LeRobot's venv for `make parity` (scripts/lerobot_venv.sh); extra pytest arguments for it.
LEROBOT_VENV ?= .venv-lerobot
export LEROBOT_VENV := $(abspath $(LEROBOT_VENV))
PARITY_ARGS ?=

VENV_STAMP := $(FLASHRT_VENV)/.flashrt-bootstrap
BUILD_STAMP := install/.flashrt-build
# Everything colcon installs. Directories are listed too, so adding or deleting a file rebuilds.
BUILD_INPUTS := package.xml CMakeLists.txt resource/flashrt_ros \
	$(shell find flashrt_ros msg launch config kernels scripts \
	        -name __pycache__ -prune -o ! -name '*.pyc' -print 2>/dev/null)

.PHONY: demo test parity venv build env clean clean-venv

demo: build
	FLASHRT_SKIP_BUILD=1 scripts/run_in_env.sh flashrt-ros demo $(DEMO_ARGS)

test: build
	FLASHRT_SKIP_BUILD=1 scripts/run_in_env.sh pytest -v --durations=15 $(TEST_ARGS)

# Parity tests (parity/): LeRobot's own policies are the reference; needs no colcon build. The
# venv script is a no-op once LeRobot is installed. PYTHONPATH is replaced, not extended: the ROS
# environment's entries are for .venv's Python 3.11. flashrt_ros imports from the source tree.
parity:
	scripts/lerobot_venv.sh
	HF_HUB_OFFLINE=1 PYTHONPATH=$(CURDIR) $(LEROBOT_VENV)/bin/python -m pytest parity/ -q $(PARITY_ARGS)

venv: $(VENV_STAMP)

# bootstrap.sh re-checks a content hash of its inputs and is a no-op when it matches.
$(VENV_STAMP): requirements.txt constraints.txt scripts/bootstrap.sh
	scripts/bootstrap.sh
	@touch $@

build: $(BUILD_STAMP)

# The stamp gets the time the build started, so an edit made during the build is not missed.
$(BUILD_STAMP): $(VENV_STAMP) $(BUILD_INPUTS)
	@mkdir -p build && touch build/.flashrt-build-started
	scripts/build.sh
	@touch -r build/.flashrt-build-started $@

# Print the run-time environment as export lines: eval "$$(make -s env)"
env:
	@scripts/run_in_env.sh

clean:
	rm -rf build install log

clean-venv:
	rm -rf $(FLASHRT_VENV)
