# M3L-ROS. `make demo` and `make test` each do all of their own set-up:
# a venv in .venv with the pinned stack, then the package itself.
# A second run with nothing changed reinstalls nothing (stamp files).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
REQS   := requirements/ml.txt requirements/ros.txt requirements/test.txt
SRC    := $(shell find m3l_core m3l_ros -name '*.py' -o -name '*.safetensors') setup.py setup.cfg package.xml \
          $(wildcard launch/*.py config/*.yaml config/*.xml config/train/*.yaml)
PYTEST_ARGS ?= -q

.PHONY: all install test-tools test demo benchmark clean help
all: test

help:
	@echo "make test       venv + pinned deps + package, then the test suite"
	@echo "make demo       venv + deps, then the sensor-dropout demo on a synthetic bag"
	@echo "make benchmark  speed benchmark (side by side, prints ratios)"
	@echo "make clean      remove the venv and build files"

$(PY):
	$(PYTHON) -m venv $(VENV)

# Everything in ONE pip command so no requirement can pull another torch.
$(VENV)/.deps: $(REQS) | $(PY)
	$(PIP) install $(foreach r,$(REQS),-r $(r))
	@touch $@

# A normal (not editable) install, so launch/ and config/ land as data files.
$(VENV)/.pkg: $(VENV)/.deps $(SRC)
	$(PIP) install --no-deps --force-reinstall .
	@rm -rf build *.egg-info
	@touch $@

install: $(VENV)/.pkg

# The upstream ROS 2 Python tools (ros2 launch/run/param/lifecycle, launch_testing) are test
# tooling from ../shared, absent in a user's clone: the tests that need them skip with a reason.
ROS2_TOOLS ?= ../shared/ros2-tools/install.sh
test-tools: install
	@if [ -f $(ROS2_TOOLS) ]; then bash $(ROS2_TOOLS) $(VENV); \
	 else echo "note: $(ROS2_TOOLS) not found; tests that need ros2 launch/run will skip"; fi

# The whole suite (settings in setup.cfg [tool:pytest]: a timeout per test) on PYTEST_WORKERS
# pytest-xdist workers; each test file runs whole in one worker (module fixtures start once), and
# each worker uses its own ROS_DOMAIN_ID (m3l_ros.procs.pick_domain_id). PYTEST_WORKERS=0: one process.
PYTEST_WORKERS ?= 2
test: test-tools
	cd test && ../$(PY) -m pytest $(PYTEST_ARGS) $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile)

demo: install
	$(PY) scripts/demo.py

benchmark: install
	$(PY) scripts/benchmark_speed.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
