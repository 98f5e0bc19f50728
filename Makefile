# The lab's commands. Everything runs as root on Debian 12 (this machine, CI, the Vagrant VM).
PY := .venv/bin/python
export PATH := $(CURDIR)/.venv/bin:$(CURDIR)/.tools/bin:$(CURDIR)/node_modules/.bin:$(PATH)

.PHONY: setup doctor demo test clean help contracts gas paper bench-agent mining-check bench-chain dag

help:
	@echo "make setup   install and start everything (idempotent; ~16-22 min first time, ~10 s after)"
	@echo "make doctor  what this machine can emulate (datapath, netem, Docker, geth, solc)"
	@echo "make demo    run the default scenario on the emulated network; prints where results are"
	@echo "make test    setup + the whole test suite (what CI runs)"
	@echo "make gas     gas of every contract call beside the paper's Table III -> results/gas.{json,md}"
	@echo "make paper   the paper's Figs. 4-7 and Table II, 5 seeds -> results/paper/ (~7-13 min)"
	@echo "make bench-agent  agent speed (env steps/s, updates/s, decision latency) as JSON"
	@echo "make mining-check  3 geth miners, budgets 1:2:4, 150 blocks -> results/mining.{json,png} (~9 min)"
	@echo "make bench-chain   10-node start-up + memory, hash-budget change latency, as JSON"
	@echo "make dag     full ethash DAGs (epochs 0+1, ~25 CPU-min, 2 GiB) for chain.pow_mode=full"
	@echo "make clean   remove bridges, namespaces, containers left by a crashed run"

setup:
	bash scripts/setup.sh

doctor: setup
	$(PY) -m testbed doctor

demo: setup
	$(PY) -m testbed demo --scenario smoke

test: setup
	$(PY) -m contracts.build --check
	$(PY) -m pytest

contracts: setup
	$(PY) -m contracts.build

gas: setup
	$(PY) -m contracts.gas_report

paper: setup
	$(PY) -m agent paper

bench-agent: setup
	$(PY) -m agent bench

mining-check: setup
	$(PY) -m nodes.mining_check

bench-chain: setup
	$(PY) -m nodes.chain_bench startup --nodes 10
	$(PY) -m nodes.chain_bench budget

dag: setup
	$(PY) -m nodes.chain_bench dag --generate

clean:
	$(PY) -m testbed cleanup
