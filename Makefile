# Kiln's two entry points: `make demo` and `make test`. Everything lives in .venv at the repo root.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
CROSS  := $(VENV)/share/kiln/cross
STAMP  := $(VENV)/.installed

.PHONY: setup system-deps cross-runtimes demo test bench readme clean

setup: system-deps $(STAMP) cross-runtimes

# Debian packages: qemu-user and the arm64 sysroot that runs aarch64 IREE artifacts for verification
# (apt-get and dpkg-deb, always on Debian, also fetch the arm64 Python userland in cross-runtimes).
system-deps:
	bash scripts/install-system-deps.sh

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==25.3
	$(BIN)/python -m pip install --quiet -e '.[compiler,server,dev]'
	touch $@

# Unpacked for qemu-user, at the venv's versions: the aarch64 iree-base-runtime, and an arm64 Python 3.11
# (Debian's .debs, not installed) with the aarch64 numpy/onnxruntime/openvino wheels. Idempotent.
cross-runtimes: $(STAMP)
	bash scripts/install-cross-runtimes.sh $(BIN)/python $(CROSS)

demo: setup
	$(BIN)/python scripts/demo.py

test: setup
	$(BIN)/python -m pytest -n 2 --durations=15

bench: setup
	$(BIN)/python bench/compile_bench.py
	$(BIN)/python bench/tree_bench.py

# Regenerate the README's support matrix from the target catalog.
readme: $(STAMP)
	$(BIN)/python scripts/update_readme.py

clean:
	rm -rf $(VENV) demo-out
