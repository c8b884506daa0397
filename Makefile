# Everything set-up related is here, so that a fresh Debian 12 machine needs only `make demo` or `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := python3 python3-venv python3-gi python3-numpy gir1.2-gst-rtsp-server-1.0 \
	gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad \
	gstreamer1.0-plugins-ugly gstreamer1.0-libav ffmpeg chromium fonts-dejavu-core iproute2 wrk \
	ceph-mon ceph-osd radosgw ceph-common tzdata coturn procps
PYTEST_ARGS ?=

SYSTEM_TEST_PACKAGES := debootstrap systemd-container iproute2 ffmpeg

.PHONY: all system venv demo demo-archive test test-extended test-system bench lint clean

all: venv

system: .system.stamp
.system.stamp: Makefile
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q "ok installed" || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		$(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	fi
	@touch $@

venv: $(VENV)/.stamp
$(VENV)/.stamp: .system.stamp setup.cfg pyproject.toml constraints.txt
	[ -x $(PY) ] || /usr/bin/python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	@touch $@

demo: venv
	$(PY) sim/demo.py $(DEMO_ARGS)

# make demo-archive: the demo with a local Ceph RADOS Gateway as its off-site archive (S3 Object Lock)
demo-archive: venv
	$(PY) sim/demo.py --archive $(DEMO_ARGS)

# Two workers (the machine has 2 cores; most tests wait on real cameras and browsers), whole files per
# worker so a module's daemon and cameras stay together.
PYTEST_WORKERS ?= 2
test: venv
	tests/isolated.sh $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# Minutes-long system-level scenarios (network namespaces with a router, TURN, netem, long outages).
test-extended: venv
	tests/isolated.sh $(PY) -m pytest -m extended $(PYTEST_ARGS); rc=$$?; [ $$rc = 0 ] || [ $$rc = 5 ]  # 5: none selected

# A real systemd as PID 1 in a container runs deploy/install-station.sh and systemd/nvr.service
# (tests/system; root). The Debian image and wheels are cached in /var/cache/nvr-system-test.
test-system: venv
	@missing=$$(for p in $(SYSTEM_TEST_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q "ok installed" || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		$(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	fi
	$(SUDO) $(PY) -m pytest -m system -o log_cli=true --log-cli-level=INFO tests/system $(PYTEST_ARGS)

bench: venv
	tests/isolated.sh $(PY) bench/run.py

lint: venv
	$(VENV)/bin/ruff check nvr streams recorder web central tests bench sim
	$(VENV)/bin/mypy nvr streams recorder web central
	$(VENV)/bin/lint-imports --no-cache

clean:
	rm -rf $(VENV) .system.stamp demo-data .pytest_cache
