# lanetrace — every target bootstraps what it needs: Debian packages, .venv,
# the Python dependencies, the native library and the example programs.
VENV      := .venv
PY        := $(VENV)/bin/python
PIP       := $(VENV)/bin/pip
APT_STAMP := $(VENV)/.apt-stamp
DEP_STAMP := $(VENV)/.deps-stamp
APT_PKGS  := gcc make libc6-dev protobuf-compiler uftrace wrk valgrind \
             g++ sqlite3 python3 python3.11 openssl jq xz-utils curl strace
BUILD_LOCK := /tmp/lanetrace-build.lock
PYTEST_WORKERS ?= 2

.PHONY: demo test native examples bench bench-throughput bench-query clean docs

$(APT_STAMP):
	@mkdir -p $(VENV)
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi
	@touch $@

$(DEP_STAMP): $(APT_STAMP) pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel cffi
	$(PIP) install -q --no-build-isolation -e '.[test]'
	@touch $@

# Rebuild the cffi extension and the agent library after a change in native/.
# An editable install leaves the package's bytecode to be written on first
# import, which PYTHONDONTWRITEBYTECODE forbids: every lanetrace process would
# then compile each of its modules from source at every start (~0.1 s of CPU
# for each of a session's processes). A stale .pyc is ignored, never used.
native: $(DEP_STAMP)
	flock $(BUILD_LOCK) $(PIP) install -q --no-build-isolation --no-deps -e .
	$(PY) -m compileall -q services/lanetrace

examples: $(APT_STAMP)
	$(MAKE) -s -C examples

test: native examples
	$(PY) -m pytest -n $(PYTEST_WORKERS) -q tests

demo: native examples
	$(PY) -m lanetrace.demo

bench: native examples
	$(PY) bench/overhead.py
	$(PY) bench/throughput.py

# One table: lanetrace, uftrace and Frida on four workloads, plus the rate the
# drainers and the writer sustain (bench/README.md).
bench-throughput: native examples
	$(PY) bench/throughput.py

bench-query: native
	$(PY) bench/query.py

clean:
	find services -name __pycache__ -prune -exec rm -rf {} +
	rm -rf build services/lanetrace/*.so services/lanetrace/agent services/lanetrace/_native*.c examples/bin traces
