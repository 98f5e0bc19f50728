"""``make demo``: the Double-DQN deciding on the live testbed, beside greedy on the same seed.

1. The DDQN of this scenario's model is read from ``demo.model`` (default
   ``results/models/ddqn-M<M>-U<U>-<digest>.pt``, the digest of what trains it: the model, the
   learner, the seed, ``demo.train_slots``); when there is none it is trained in
   simulation first (``demo.train_slots`` slots of :class:`agent.env.MecChainEnv`, the loop of
   :mod:`agent.train`) and saved there, so the next demo starts at once.
2. The lab is brought up, run for ``demo.slots`` slots (0: ``lab.slots``) with one policy, torn
   down; then again with the next (``demo.policies``; the UE clients draw the same tasks: same
   seed).
3. One report a researcher reads in one screen (``demo.md``, ``demo.png``, ``demo.json``):
   utility over time per policy, latency distribution, gas per call, blocks per miner, hash
   budgets and reputation over time, and whether the DDQN did at least as well as greedy
   (with the per-term numbers saying why when it did not). One run per policy cannot tell a
   policy from its run: the verdict states the smallest difference this length resolves (the
   95 % interval of the difference of the slot means) and points to ``python -m testbed
   compare``, which decides over repeated runs.

Each policy's full live report (tasks.csv, slots.csv, summary.json, ...) is in its subfolder.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from testbed.experiments.live_report import read_jsonl
from testbed.experiments.stats import ci95


#: What decides the DDQN :func:`train_in_simulation` makes: the model (its environment), the
#: learner's hyperparameters, the seed and how long it trains. Its file is named by their digest,
#: so a saved DDQN is reused only by a scenario that would train the same one.
TRAINED_BY = ("model", "learner", "seed", "demo.train_slots")


def model_path(scn) -> Path:
    """Where this scenario's DDQN is kept: ``demo.model``, or one file per digest of
    :data:`TRAINED_BY`."""
    if scn.demo.model:
        return scn.path(scn.demo.model)
    digest = scn.digest(only=TRAINED_BY)[:12]
    return scn.results_path / "models" / f"ddqn-M{scn.model.n_servers}-U{scn.model.n_users}-{digest}.pt"


def train_in_simulation(scn, path: Path) -> dict:
    """A fresh DDQN trained on the simulated environment of ``scn.model``, saved to ``path``."""

    from agent.env import MecChainEnv
    from agent.registry import make_agent
    from agent.train import run_slots
    agent = make_agent("ddqn", scn.model, scn.learner, seed=scn.seed)
    bar = tqdm(total=scn.demo.train_slots, desc="DDQN in simulation", unit="slot")
    out = run_slots(agent, MecChainEnv(scn.model), scn.demo.train_slots, seed=scn.seed,
                    on_slot=lambda k, r: bar.update(1))
    bar.close()
    agent.save(path)
    tail = out["curve"][-max(1, len(out["curve"]) // 10):]
    return {"path": str(path), "slots": scn.demo.train_slots, "seconds": out["seconds"],
            "final_utility": float(np.mean(tail))}


def resolve(scn, name: str, trained: dict) -> str:
    """A demo policy name -> a lab.policy (``ddqn`` -> ``file:<the saved DDQN>``)."""
    if name != "ddqn":
        return name
    path = model_path(scn)
    if not path.exists():
        print(f"[demo] no saved DDQN for this model at {path}: training one in simulation "
              f"({scn.demo.train_slots} slots)", flush=True)
        trained.update(train_in_simulation(scn, path))
    return f"file:{path}"


def run(scn, out_dir: Path) -> dict:
    from testbed.experiments import live
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    trained: dict = {}
    runs: dict[str, dict] = {}
    slots = scn.demo.slots or scn.lab.slots
    scn = dataclasses.replace(scn, lab=dataclasses.replace(scn.lab, slots=slots))
    for name in scn.demo.policies:
        policy = resolve(scn, name, trained)
        scn_p = dataclasses.replace(scn, lab=dataclasses.replace(scn.lab, policy=policy))
        print(f"[demo] {name}: the live lab for {slots} slots of {scn.model.slot_s} s", flush=True)
        t0 = time.monotonic()
        try:
            runs[name] = live.run(scn_p, out_dir / name.replace(":", "_").replace("/", "_"))
        except Exception as e:          # one policy's failure does not hide the others' results
            runs[name] = {"error": f"{type(e).__name__}: {e}", "run_dir": None}
            print(f"[demo] {name} failed: {e}", flush=True)
        runs[name]["wall_s"] = round(time.monotonic() - t0, 1)
    report = summarize(scn, runs, trained)
    (out_dir / "demo.json").write_text(json.dumps(report, indent=1, default=float))
    plots(runs, out_dir / "demo.png")
    (out_dir / "demo.md").write_text(markdown(report))
    report["out_dir"] = str(out_dir)
    return report


# ------------------------------------------------------------------------------ report
def _slots(summary: dict) -> list[dict]:
    path = Path(summary["run_dir"]) / "slots.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _tasks(summary: dict) -> list[dict]:
    return [t for t in read_jsonl(sorted((Path(summary["run_dir"]) / "ues").glob("*/tasks.jsonl")))
            if t.get("outcome") == "completed"]


def summarize(scn, runs: dict, trained: dict) -> dict:
    per = {}
    for name, s in runs.items():
        if "error" in s:
            per[name] = {"error": s["error"]}
            continue
        u = np.array(s["utility"]["per_slot"], dtype=float)
        mean, half = ci95(u)
        per[name] = {"utility_mean": mean, "utility_ci95": half, "slots": len(u),
                     "mining_reward_mean": s["utility"]["mining_reward_mean"],
                     "revenue_mean": s["utility"]["revenue_mean"],
                     "latency_mean_s": s["utility"]["latency_mean_s"],
                     "tasks": s["tasks"], "books_close": s["lost"]["books_close"],
                     "e2e_p50_s": s["latency_s"]["e2e_s"].get("p50"),
                     "service_p50_s": s["latency_s"]["service_s"].get("p50"),
                     "gas_median": {k: v.get("p50") for k, v in s["gas"].items()},
                     "blocks_per_miner": {m: v["blocks"] for m, v in (s.get("blocks_per_miner") or {}).items()},
                     "decision_ms": s["decision"]["decision_ms"], "slot_to_applied_s": s["decision"]["slot_start_to_applied_s"],
                     "run_dir": s["run_dir"], "wall_s": s.get("wall_s")}
    verdict = None
    if "ddqn" in per and "greedy" in per and "error" not in per["ddqn"] and "error" not in per["greedy"]:
        d, g = per["ddqn"], per["greedy"]
        ok = d["utility_mean"] >= g["utility_mean"]
        terms = {k: d[k] - g[k] for k in ("mining_reward_mean", "revenue_mean", "latency_mean_s")}
        diff = d["utility_mean"] - g["utility_mean"]
        noise = float(np.hypot(d["utility_ci95"], g["utility_ci95"]))
        verdict = {"ddqn_at_least_greedy": ok, "difference": diff, "difference_ci95": noise,
                   "significant": bool(abs(diff) > noise),
                   # the smallest difference of slot means this length resolves; slots of one run
                   # are not independent runs, so this is a floor: `compare` decides over runs
                   "resolution": noise,
                   "term_differences": terms,
                   "why": None if ok else (
                       "the DDQN's utility per slot is below greedy's: mining reward "
                       f"{terms['mining_reward_mean']:+.3f}, revenue {terms['revenue_mean']:+.4f}, latency "
                       f"{terms['latency_mean_s']:+.3f} s per slot (DDQN minus greedy); it was trained on the "
                       "simulator, whose constants differ from the testbed's (see `python -m testbed fidelity`), "
                       "and greedy reads the measured reputation directly")}
    return {"scenario": scn.name, "scenario_digest": scn.digest(), "M": scn.model.n_servers, "U": scn.model.n_users, "slots": scn.lab.slots,
            "outside": scn.chain.outside, "payment": scn.contract.payment,
            "slot_s": scn.model.slot_s, "seed": scn.seed, "trained": trained or None,
            "ddqn_model": str(model_path(scn)), "policies": per, "verdict": verdict}


def _legend(ax, **kw) -> None:
    if ax.get_legend_handles_labels()[0]:      # a failed policy leaves a panel empty
        ax.legend(**kw)


def plots(runs: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ok = {n: s for n, s in runs.items() if "error" not in s}
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    styles = ["-", "--", ":", "-."]
    slots = {n: _slots(s) for n, s in ok.items()}
    ax = axes[0][0]
    for n, sl in slots.items():
        ax.plot([r["slot"] for r in sl], [r["utility"] for r in sl], label=n)
    ax.set_title("utility (11) per slot, measured")
    ax.set_xlabel("slot")
    _legend(ax)
    ax = axes[0][1]
    data = [[t["e2e_s"] for t in _tasks(s) if t.get("e2e_s") is not None] for s in ok.values()]
    if any(data):
        ax.boxplot([d or [0] for d in data], tick_labels=list(ok), showfliers=True)
    ax.set_title("end-to-end latency per task (s)")
    ax = axes[0][2]
    calls = [c for c in ("createTrade", "trading", "complete", "refund", "openChannel", "topUp", "redeem")
             if any((s["gas"].get(c) or {}).get("n") for s in ok.values())]
    xs = np.arange(len(calls))
    for i, (n, s) in enumerate(ok.items()):
        ax.bar(xs + i * 0.8 / max(1, len(ok)), [s["gas"][c].get("p50") or 0 for c in calls], 0.8 / max(1, len(ok)),
               label=n)
    ax.set_xticks(xs + 0.4 - 0.4 / max(1, len(ok)), calls)
    ax.set_title("gas per call (median)")
    _legend(ax)
    ax = axes[1][0]
    for i, (n, s) in enumerate(ok.items()):
        per = s.get("blocks_per_miner") or {}
        ms = list(per)
        ax.bar(np.arange(len(ms)) + i * 0.8 / max(1, len(ok)), [per[m]["blocks"] for m in ms],
               0.8 / max(1, len(ok)), label=n)
        ax.set_xticks(np.arange(len(ms)), ms, rotation=45)
    ax.set_title("blocks per miner (whole run)")
    _legend(ax)
    for ax, key, title in ((axes[1][1], "levels", "hash level per server"),
                           (axes[1][2], "reputation", "reputation Υ_m per server")):
        for i, (n, sl) in enumerate(slots.items()):
            if not sl:
                continue
            for m in sl[0][key]:
                ax.plot([r["slot"] for r in sl], [r[key].get(m, np.nan) for r in sl], styles[i % 4],
                        label=f"{n} {m}")
        ax.set_title(f"{title} ({' / '.join(f'{n} {styles[i % 4]}' for i, n in enumerate(slots))})")
        ax.set_xlabel("slot")
        _legend(ax, fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown(r: dict) -> str:
    L = [f"# Demo: {', '.join(r['policies'])} on the live lab (M = {r['M']}, U = {r['U']}, {r['slots']} slots of "
         f"{r['slot_s']} s, seed {r['seed']}; chain.outside = {r['outside']}, contract.payment = {r['payment']})", ""]
    if r["trained"]:
        t = r["trained"]
        L += [f"DDQN trained in simulation for this run: {t['slots']} slots in {t['seconds']:.0f} s "
              f"(final utility {t['final_utility']:.2f}), saved to {t['path']}.", ""]
    else:
        L += [f"DDQN: the saved {r['ddqn_model']}.", ""]
    L += ["| policy | utility/slot (±95 %) | mining | revenue | latency s/slot | tasks done/offered | e2e p50 s "
          "| decision p99 ms | applied p95 s | books close |", "|---|---|---|---|---|---|---|---|---|---|"]
    for n, p in r["policies"].items():
        if "error" in p:
            L.append(f"| {n} | failed: {p['error']} |")
            continue
        L.append(f"| {n} | {p['utility_mean']:.2f} ± {p['utility_ci95']:.2f} | {p['mining_reward_mean']:.2f} | "
                 f"{p['revenue_mean']:.3f} | {p['latency_mean_s']:.2f} | {p['tasks']['completed']}/{p['tasks']['offered']} | "
                 f"{p['e2e_p50_s'] or float('nan'):.2f} | {p['decision_ms'].get('p99', float('nan')):.2f} | "
                 f"{p['slot_to_applied_s'].get('p95', float('nan')):.3f} | {p['books_close']} |")
    v = r["verdict"]
    if v:
        sig = ("" if v["significant"] else
               f" The difference is within chance (±{v['difference_ci95']:.2f}, 95 %).")
        L += ["", (f"**DDQN ≥ greedy: yes** (+{v['difference']:.2f} per slot)." if v["ddqn_at_least_greedy"]
                   else f"**DDQN ≥ greedy: no** ({v['difference']:.2f} per slot). {v['why']}.") + sig,
              "", f"Resolution: one run of {r['slots']} slots per policy resolves a difference of slot means of "
                  f"about ±{v['resolution']:.2f} per slot at best (slots of one run are not independent, and one "
                  "run cannot tell a policy from its run). For a verdict over repeated runs (ABBA, the same task "
                  "streams per pair): `python -m testbed compare --policies ddqn,greedy --runs 3`."]
    L += ["", "Gas per call (median): " + "; ".join(
        f"{n}: " + ", ".join(f"{c} {g:,.0f}" for c, g in p["gas_median"].items() if g)
        for n, p in r["policies"].items() if "error" not in p), "",
        "Each policy's full report: " + ", ".join(f"{n}: {p.get('run_dir')}/summary.md"
                                                  for n, p in r["policies"].items() if "error" not in p),
        "", "![demo](demo.png)", ""]
    return "\n".join(L)
