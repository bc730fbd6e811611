# relaynat's two everyday commands, and the setup they share.
#
#   make demo    the relay, a skeleton and a client on 127.0.0.1, in front of a small web page
#   make check   the tests (trial, in two workers), the linter and the type checker
#   make venv    only the setup: .venv with relaynat and its test tools installed
#   make deb     the Debian package, build/deb/relaynat_VERSION_ARCH.deb (debian/)
#
# The install is editable in setuptools' "compat" mode on purpose: the default
# (PEP 660) editable install hides twisted/plugins/ from twistd, which then
# knows no relay, skeleton or client.
# The package (make deb) is a normal, non-editable install.

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.relaynat-installed

.PHONY: venv demo check

venv: $(STAMP)

# Redone when the package's metadata changes; otherwise a repeat is instant.
$(STAMP): setup.cfg pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV) || { \
	  echo "make: '$(PYTHON) -m venv' failed (no ensurepip?); using virtualenv from PyPI"; \
	  rm -rf $(VENV); tools=$$(mktemp -d) && \
	  $(PYTHON) -m pip install --quiet --target "$$tools" virtualenv && \
	  PYTHONPATH="$$tools" $(PYTHON) -m virtualenv --quiet $(VENV); status=$$?; \
	  rm -rf "$$tools"; exit $$status; }
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
	  -e '.[test]' --config-settings editable_mode=compat
	@touch $(STAMP)

demo: venv
	$(VENV)/bin/python -m relaynat.demo

check: venv
	$(VENV)/bin/trial -j2 relaynat
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy relaynat twisted

# The benchmark (bench/README.md): every path, 3 repetitions, about 15 minutes;
# `make bench BENCH_ARGS=--quick` for a one-minute check.
.PHONY: bench
bench: venv
	$(VENV)/bin/python bench/run.py $(BENCH_ARGS)

# The round-trip benchmark (bench/README.md): time to first byte over two
# 25 ms legs in network namespaces; root only (it says so and skips
# otherwise), about a minute.  `make bench-rtt RTT_ARGS='--only ssh'`.
.PHONY: bench-rtt
bench-rtt: venv
	$(VENV)/bin/python bench/rtt.py $(RTT_ARGS)

# The Debian package (debian/, dh-virtualenv): relaynat and its dependencies
# from PyPI in /opt/venvs/relaynat, the systemd units and the relaynat user.
# Built from a copy of the tree's files (tracked and new, not ignored) in
# build/deb/src, so that the build's leftovers stay out of the tree and
# dpkg-buildpackage's output, which goes to the parent folder, lands in
# build/deb/.  Needs `apt-get build-dep ./` (debhelper, dh-virtualenv,
# python3-venv); about 3 minutes.  PATH is Debian's own, so that
# /usr/bin/python3 builds it, not a python3 met earlier on PATH.
DEB_DIR := build/deb
.PHONY: deb
deb:
	rm -rf $(DEB_DIR) && mkdir -p $(DEB_DIR)/src
	git ls-files -z --cached --others --exclude-standard \
	  | tar --null --files-from=- --ignore-failed-read -cf - | tar -xf - -C $(DEB_DIR)/src
	cd $(DEB_DIR)/src && env -u VIRTUAL_ENV -u PYTHONPATH -u PYTHONHOME \
	  PATH=/usr/sbin:/usr/bin:/sbin:/bin \
	  dpkg-buildpackage --build=binary --no-sign
	rm -rf $(DEB_DIR)/src
	@ls -l $(DEB_DIR)/*.deb
