# Set-up and everyday commands. `make demo` and `make test` work on a fresh machine with
# Python 3.11+: they create .venv (torch CPU build, mpiland, and the pip-installable MPICH).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
MPIO_VENV ?= .venv-mpio

.PHONY: setup demo readme-figures test test-fast clean

$(BIN)/mpiland: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[test,mpich]"
	touch $@

setup: $(BIN)/mpiland

# The built-in demo: trains the small digits CNN if needed, evaluates a 21x21 random-direction
# surface and a 51-point curve, the init -> final interpolation, the PCA plane of the training
# trajectory, a plane through three checkpoints and a chain through them, and draws all into plots/.
demo: setup
	$(BIN)/mpiland run jobs/quickstart.toml
	$(BIN)/mpiland run jobs/quickstart-1d.toml
	$(BIN)/mpiland run jobs/interpolation.toml
	$(BIN)/mpiland run jobs/pca.toml
	$(BIN)/mpiland run jobs/plane.toml
	$(BIN)/mpiland run jobs/chain.toml
	$(BIN)/mpiland plot surfaces/quickstart.h5 --kind all --out plots/
	$(BIN)/mpiland plot surfaces/quickstart-1d.h5 --out plots/
	$(BIN)/mpiland plot surfaces/interpolation.h5 --out plots/
	$(BIN)/mpiland plot surfaces/pca.h5 --kind contour --out plots/
	$(BIN)/mpiland plot surfaces/plane.h5 --kind contour --out plots/
	$(BIN)/mpiland plot surfaces/chain.h5 --metric test_loss --out plots/
	$(BIN)/mpiland trajectory "runs/quickstart/epoch_*.pt" --out plots/trajectory
	$(BIN)/mpiland info surfaces/quickstart.h5
	$(BIN)/mpiland info surfaces/interpolation.h5

# The README's demo pictures and timing table, regenerated from the demo (training included); paste the
# table it prints into the README's Quick start.
readme-figures: setup
	$(BIN)/python benchmarks/readme.py --fresh --img docs/img

# The whole suite. Parallel-HDF5 tests use $(MPIO_VENV) when it exists
# (created by docker/install-mpio-env.sh, as .ci/run does); SLURM tests need slurmctld/slurmd/munge.
test: setup
	MPILAND_MPIO_PYTHON=$(if $(wildcard $(MPIO_VENV)/bin/python),$(abspath $(MPIO_VENV))/bin/python,) \
	  $(BIN)/python -m pytest -q -ra

test-fast: setup
	$(BIN)/python -m pytest -q -m "not mpi and not slurm"

clean:
	rm -rf runs surfaces plots .pytest_cache

.PHONY: container-test bench-coordinator

# The image of docker/Dockerfile built with podman from a Debian base made here (debootstrap; no registry),
# then the demo job at 1 and 2 ranks and the MPI-IO writer tests run inside it. Needs root and the Debian
# packages podman, runc and debootstrap (docker/container-test.sh). On 2 cores: about 10 min (base 5, build 4.5,
# checks 0.5-2.5) when install-mpio-env.sh has cached its h5py wheel (as .ci/run's .venv-mpio does), 20+ without.
container-test:
	bash docker/container-test.sh

# The rank-0 coordinator with a fixed cost per point at 8, 32 and 128 ranks, oversubscribed (docs/scale.md).
bench-coordinator: setup
	$(BIN)/python benchmarks/coordinator.py

.PHONY: demo-transformer

# A one-layer GPT-2 (transformers) learning addition modulo 59 from 30% of the pairs (mpiland/modadd.py):
# trains it on one thread when runs/modadd/ lacks its checkpoints (1200 AdamW steps, 47-66 s on 2 cores),
# evaluates the 21×21 random-direction landscape at initialisation, at the memorised model (step 200) and
# at the generalised end, and the chain init -> mid -> final beside the straight line, and draws them into
# docs/img/transformer-*.png: 3 min 15 s from scratch on 2 cores at load 2-3.5 (training 54 s), 45 s
# when the checkpoints and surfaces are already there.
demo-transformer: setup
	$(BIN)/python -c "import transformers" 2>/dev/null || $(BIN)/pip install -q -e ".[hf]"
	test -f runs/modadd/init.pt -a -f runs/modadd/mid.pt -a -f runs/modadd/final.pt || \
	  $(BIN)/python -m mpiland.modadd train --out runs/modadd
	$(BIN)/mpiland run jobs/transformer-init.toml
	$(BIN)/mpiland run jobs/transformer-mid.toml
	$(BIN)/mpiland run jobs/transformer.toml
	$(BIN)/mpiland run jobs/transformer-path.toml
	$(BIN)/mpiland plot surfaces/transformer-init.h5 surfaces/transformer-mid.h5 surfaces/transformer.h5 \
	  --metric train_loss --out docs/img/transformer-train.png
	$(BIN)/mpiland plot surfaces/transformer-init.h5 surfaces/transformer-mid.h5 surfaces/transformer.h5 \
	  --metric test_loss --out docs/img/transformer-test.png
	$(BIN)/mpiland plot surfaces/transformer-path.h5 --out docs/img/transformer-path.png
