# The lab's commands. Everything runs as root on Debian 12 (this machine, CI, the Vagrant VM).
# Each target calls the one command line, `python -m testbed VERB` (see `python -m testbed --help`),
# with a scenario from scenarios/; add overrides with e.g. `make paper SET="--set paper.seeds=3"`.
PY := .venv/bin/python
TB := $(PY) -m testbed
SET ?=
export PATH := $(CURDIR)/.venv/bin:$(CURDIR)/.tools/bin:$(CURDIR)/node_modules/.bin:$(PATH)

CALIBRATION := results/calibration.json

.PHONY: setup doctor demo smoke test clean help contracts gas paper bench-agent bench-lab mining-check bench-chain \
        calibrate dag images bare-debian-check cluster-check

help:
	@echo "make setup   install and start everything (idempotent; ~16-22 min first time, ~10 s after)"
	@echo "make doctor  what this machine can emulate; fails if a required part is missing"
	@echo "make demo    the DDQN on the live lab beside greedy (scenarios/lab.toml); prints where the report is"
	@echo "make smoke   the toolchain check: one switch, two hosts, a UE container, ping + TCP"
	@echo "make test    setup + calibration (once) + the whole test suite (what CI runs)"
	@echo "make calibrate  measure this machine (hash rate per core, work kernel) -> results/calibration.json"
	@echo "make gas     gas of every contract call beside the paper's Table III -> results/gas.{json,md}"
	@echo "make paper   the paper's Figs. 4-7 and Table II, every reading -> results/paper/"
	@echo "make bench-agent  agent speed and quality as JSON"
	@echo "make bench-lab    one live run measured: bring-up, memory, applied latency -> results/bench/lab-MxU/bench.json"
	@echo "make mining-check  3 geth miners, budgets 1:2:4, 150 blocks -> results/mining.{json,png} (~9 min)"
	@echo "make bench-chain   10-node start-up + memory, hash-budget change latency, as JSON"
	@echo "make dag     full ethash DAGs (epochs 0+1, ~25 CPU-min, 2 GiB) for chain.pow_mode=full"
	@echo "make clean   remove bridges, namespaces, containers left by a crashed run"
	@echo "make bare-debian-check  the lab VM's set-up and tests in a bare Debian 12 container (~22 min)"
	@echo "make cluster-check  two Debian 12 containers as servers: the network, the chain and live runs across them (~10 min, docs/cluster.md)"
	@echo "Every target runs \`python -m testbed VERB --scenario NAME\`; SET=\"--set a.b=v\" overrides."

setup:
	bash scripts/setup.sh

doctor: setup
	$(TB) doctor $(SET)

demo: setup $(CALIBRATION)
	$(TB) demo $(SET)

smoke: setup
	$(TB) smoke $(SET)

# The live lab maps the model onto this machine's measured CPU and hash rates: measured once
# per machine (about 70 s), kept in results/ (git-ignored: it belongs to the machine).
$(CALIBRATION): | setup
	$(TB) calibrate

test: setup $(CALIBRATION)
	$(TB) build-contracts --check
	$(PY) -m pytest -n 2 --dist loadgroup

contracts: setup
	$(TB) build-contracts

images: setup
	$(TB) build-images

calibrate: setup
	$(TB) calibrate $(SET)

bare-debian-check: setup
	bash scripts/bare-debian-check.sh $(BARE_DEBIAN_CHECK_ARGS)

# Two containers as two servers; the network across them from this machine (docs/cluster.md).
cluster-check: setup
	bash scripts/cluster-check.sh $(CLUSTER_CHECK_ARGS)

gas: setup
	$(TB) gas $(SET)

paper: setup
	$(TB) paper $(SET)

bench-agent: setup
	$(TB) bench-agent $(SET)

bench-lab: setup $(CALIBRATION)
	$(TB) bench-lab $(SET)

mining-check: setup
	$(TB) mining-check $(SET)

bench-chain: setup
	$(TB) bench-chain startup $(SET)
	$(TB) bench-chain budget $(SET)

dag: setup
	$(TB) bench-chain dag --generate $(SET)

clean:
	$(TB) cleanup
