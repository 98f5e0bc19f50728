"""`make demo` and `python -m testbed fidelity`, as a user runs them, at a small scale: the DDQN
trained in simulation (no saved model yet), then the live lab with the DDQN deciding and again
with greedy on the same seed; one report; then the simulator measured against the greedy run.
Nothing may be left behind."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SMALL_LAB, chain_overrides, passable

ROOT = Path(__file__).resolve().parent.parent
# the defaults users run (payment channels on the paper's chain, chain.outside = "virtual"), small
# (lab.drain_s at the scenario's 150 s: a bound, not a wait; 60 s was too short for the final
# redemptions when a slow machine mined 6 blocks in a whole run: books_close False, 2026-12-07)
SMALL = chain_overrides(SMALL_LAB + ["model.n_users=3", "model.slot_s=6", "lab.slots=8", "demo.slots=8",
                                     "lab.drain_s=150", "contract.confirmations=1", "demo.train_slots=200"], "virtual")



def run_testbed(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "testbed", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.network
@pytest.mark.docker
@pytest.mark.chain
def test_demo_then_fidelity(network_ready, no_leftovers, tmp_path):
    passable(tmp_path)
    model = tmp_path / "ddqn.pt"
    sets = [x for s in SMALL + [f"demo.model={model}"] for x in ("--set", s)]
    out = run_testbed("demo", "--out", str(tmp_path / "demo"), *sets)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "training one in simulation" in out.stdout and model.exists()      # trained, then saved
    assert "Error" not in out.stdout                                          # a healthy run looks healthy
    rep = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert set(rep["policies"]) == {"ddqn", "greedy"}
    for name, p in rep["policies"].items():
        assert "error" not in p, (name, p)
        assert p["books_close"] and p["slots"] == 8 and p["tasks"]["completed"] >= 4, (name, p)
        assert p["slot_to_applied_s"]["n"] == 8
    v = rep["verdict"]
    assert v["ddqn_at_least_greedy"] == (rep["policies"]["ddqn"]["utility_mean"]
                                         >= rep["policies"]["greedy"]["utility_mean"])
    md = (tmp_path / "demo" / "demo.md").read_text()
    assert "| ddqn |" in md and "| greedy |" in md and "DDQN ≥ greedy" in md
    assert (tmp_path / "demo" / "demo.png").stat().st_size > 10_000

    fid = run_testbed("fidelity", "--run", str(tmp_path / "demo" / "greedy"), "--out", str(tmp_path / "fid"),
                  timeout=300)
    assert fid.returncode == 0, fid.stdout[-3000:] + fid.stderr[-3000:]
    (folder,) = list((tmp_path / "fid").iterdir())
    res = json.loads((folder / "fidelity.json").read_text())
    measured = res["measured_latency_s"]
    assert res["tasks"] == len(measured) >= 4
    for fit in ("before", "after"):
        lat = res[fit]["latency"]
        assert lat["ratio_of_means"] == pytest.approx(lat["measured_mean_s"] / lat["simulated_mean_s"])
        assert set(res[fit]["block_share"]) == {"mec1", "mec2"}
    # the fitted simulator is at least as close on the mean latency as the unfitted one
    assert abs(res["after"]["latency"]["ratio_of_means"] - 1) <= abs(res["before"]["latency"]["ratio_of_means"] - 1)
    # no constant of the utility is fitted: H is the scenario's, and the mining check is reported
    h = float(next(x for x in SMALL if x.startswith("model.network_hash_mhs=")).split("=")[1])
    assert res["network_hash_mhs"] == h and res["constants"]["after"].keys() == res["constants"]["before"].keys()
    u = res["before"]["utility"]
    assert u["simulated_over_measured"] == pytest.approx(u["simulated_mean"] / u["measured_mean"])
    assert res["mining"]["mec_blocks"] == sum(v["blocks"] for v in res["mining"]["per_miner"].values())
    rows = list(csv.DictReader(open(folder / "quantities.csv")))
    assert {r["quantity"] for r in rows} >= {"latency per task (mean, s)", "reputation per server",
                                            "block share per miner", "utility per slot"}
    assert (folder / "fidelity.png").exists() and "Fidelity" in (folder / "fidelity.md").read_text()


def test_the_saved_ddqn_is_reused_only_by_what_would_train_the_same_one(tmp_path):
    """The demo's DDQN file is keyed by the digest of what trains it (model, learner, seed,
    demo.train_slots): a scenario that differs elsewhere (the lab) reuses it, a changed learner
    setting misses it and trains its own, and so does another seed or training length."""
    from scenario.config import load_scenario
    from testbed.experiments.demo import model_path, resolve
    base = [f"results_dir='{tmp_path}'", "model.n_servers=3", "model.n_users=4", "demo.train_slots=150"]
    scn = load_scenario(None, base)
    trained: dict = {}
    policy = resolve(scn, "ddqn", trained)
    assert trained["slots"] == 150 and policy == f"file:{model_path(scn)}" and model_path(scn).exists()
    again: dict = {}
    assert resolve(load_scenario(None, base + ["lab.slots=3", "lab.policy='greedy'"]), "ddqn", again) == policy
    assert again == {}                                                    # the same training: the saved one
    changed = load_scenario(None, base + [f"learner.lr={scn.learner.lr * 2}"])
    retrained: dict = {}
    assert resolve(changed, "ddqn", retrained) != policy and retrained     # a stale DDQN is never reused
    assert model_path(changed).exists() and model_path(scn).exists()
    for other in (["seed=1"], ["demo.train_slots=151"], ["model.unit_price=0.2"]):
        assert model_path(load_scenario(None, base + other)) != model_path(scn), other
