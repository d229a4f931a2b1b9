# The two set-up commands are `make demo` and `make test`; both bootstrap .venv from the
# package registries first (idempotent: a second run with nothing changed is quick).
VENV    ?= .venv
PY      := $(VENV)/bin/python
RUN     := scripts/ros-env
STAMP   := $(VENV)/.efs-bootstrap
BOOTSTRAP_INPUTS := requirements.txt setup.py setup.cfg scripts/bootstrap.sh \
                    scripts/build_interfaces.sh $(wildcard third_party/event_camera_msgs/*/*) \
                    third_party/event_camera_msgs/CMakeLists.txt

.PHONY: bootstrap test demo eval bench bench-quality train train-restore lint bringup clean

$(STAMP): $(BOOTSTRAP_INPUTS)
	scripts/bootstrap.sh $(VENV)
	@touch $@

bootstrap: $(STAMP)

test: $(STAMP)
	$(RUN) $(PY) -m pytest test $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check efs_ros test launch

demo: $(STAMP)
	$(RUN) $(PY) -m efs_ros.tools.demo $(DEMO_ARGS)

eval: $(STAMP)
	@if [ -z "$(BAG)" ] || [ -z "$(OUT)" ]; then echo "usage: make eval BAG=<bag folder or file> OUT=<folder> [CALIB=<rig calibration file>]" >&2; exit 2; fi
	$(RUN) $(PY) -m efs_ros.tools.eval "$(BAG)" "$(OUT)" $(if $(CALIB),--calib "$(CALIB)") $(EVAL_ARGS)

bench: $(STAMP)
	$(RUN) $(PY) -m efs_ros.tools.bench $(BENCH_ARGS)

bench-quality: $(STAMP)
	$(RUN) $(PY) -m efs_ros.tools.bench_quality $(BENCH_ARGS)

train: $(STAMP)
	$(RUN) $(PY) -m efs_ros.nets.train $(TRAIN_ARGS)

train-restore: $(STAMP)
	$(RUN) $(PY) -m efs_ros.nets.train_restore $(TRAIN_ARGS)

bringup: $(STAMP)
	$(RUN) $(PY) -m efs_ros.tools.bringup $(BRINGUP_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
