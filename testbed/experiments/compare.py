"""``python -m testbed compare``: does one policy do better than another on the live lab?

Each of the two policies (``compare.policies``, e.g. ``ddqn,greedy``) runs ``compare.runs``
times on the live lab, ``compare.slots`` slots each, in ABBA order (pair i: A then B for even
i, B then A for odd i, so drift over the session falls on both), and both runs of pair i on
seed ``seed + i``: the UE clients draw the same task streams. A run's utility terms (eq. (11):
mining reward, revenue, latency, and their sum) are averaged over its slots; the verdict is
over the **run means**: per policy the mean with its 95 % Student-t interval, and per term the
paired difference A − B with its interval, beyond chance only when the interval leaves out
zero (:mod:`testbed.experiments.stats`). A failed run is reported by name; its pair is left out.

Results in ``results/compare/<stamp>/``: ``compare.json``, ``compare.md``, ``compare.png``, and
every run's own report in its folder.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from testbed.experiments.stats import ci95, paired

TERMS = (("utility", "utility (11)", "mean"), ("mining", "mining reward R_m", "mining_reward_mean"),
         ("revenue", "revenue φ_u", "revenue_mean"), ("latency", "latency T (s)", "latency_mean_s"))


def order(runs: int) -> list[tuple[int, int]]:
    """(pair, policy index) in ABBA order: A B, B A, A B, ..."""
    out = []
    for i in range(runs):
        out += [(i, 0), (i, 1)] if i % 2 == 0 else [(i, 1), (i, 0)]
    return out


def run(scn, out_dir: Path, progress=print) -> dict:
    from testbed.experiments import live
    from testbed.experiments.demo import resolve
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    c = scn.compare
    slots = c.slots or scn.lab.slots
    trained: dict = {}
    policies = {name: resolve(scn, name, trained) for name in c.policies}
    runs: list[dict] = []
    plan = order(c.runs)
    for k, (i, j) in enumerate(plan):
        name = c.policies[j]
        scn_r = dataclasses.replace(scn, seed=scn.seed + i,
                                    lab=dataclasses.replace(scn.lab, policy=policies[name], slots=slots))
        folder = out_dir / f"pair{i}-{name.replace(':', '_').replace('/', '_')}"
        progress(f"[compare] run {k + 1}/{len(plan)}: {name}, pair {i} (seed {scn.seed + i}), {slots} slots")
        t0 = time.monotonic()
        rec = {"pair": i, "policy": name, "seed": scn.seed + i, "run_dir": str(folder),
               "scenario_digest": scn_r.digest()}
        try:
            s = live.run(scn_r, folder)
            rec.update(slots=s["slots"], books_close=s["lost"]["books_close"], tasks=s["tasks"], chain=s.get("chain"),
                       **{key: s["utility"][field] for key, _, field in TERMS})
        except Exception as e:         # one failed run does not hide the others
            rec["error"] = f"{type(e).__name__}: {e}"
            progress(f"[compare] run {k + 1} failed: {rec['error']}")
        rec["wall_s"] = round(time.monotonic() - t0, 1)
        runs.append(rec)
        with open(out_dir / "runs.jsonl", "a") as f:
            f.write(json.dumps(rec, default=float) + "\n")
    report = verdict(scn, runs, slots, trained)
    (out_dir / "compare.json").write_text(json.dumps(report, indent=1, default=float))
    plots(report, out_dir / "compare.png")
    (out_dir / "compare.md").write_text(markdown(report))
    report["out_dir"] = str(out_dir)
    return report


def verdict(scn, runs: list[dict], slots: int, trained: dict | None = None) -> dict:
    """Per policy and term the mean over runs with its interval; per term the paired difference."""
    a_name, b_name = scn.compare.policies
    ok = [r for r in runs if "error" not in r]
    by = {(r["pair"], r["policy"]): r for r in ok}
    pairs = sorted({p for p, _ in by if (p, a_name) in by and (p, b_name) in by})
    per_policy = {}
    for name in (a_name, b_name):
        rs = [by[(p, name)] for p in pairs]
        per_policy[name] = {key: dict(zip(("mean", "ci95"), ci95([r[key] for r in rs])))
                            for key, _, _ in TERMS}
        per_policy[name]["runs"] = len(rs)
        per_policy[name]["books_close"] = all(r["books_close"] for r in rs)
    diffs = {key: paired([by[(p, a_name)][key] for p in pairs], [by[(p, b_name)][key] for p in pairs])
             for key, _, _ in TERMS}
    return {"scenario": scn.name, "scenario_digest": scn.digest(), "M": scn.model.n_servers, "U": scn.model.n_users, "slots": slots,
            "slot_s": scn.model.slot_s, "seed": scn.seed, "policies": [a_name, b_name],
            "outside": scn.chain.outside, "payment": scn.contract.payment, "trained": trained or None,
            "pairs": len(pairs), "runs": runs, "per_policy": per_policy, "difference": diffs,
            "failed_runs": [r for r in runs if "error" in r]}


def markdown(r: dict) -> str:
    a, b = r["policies"]
    L = [f"# Compare: {a} vs {b} on the live lab (M = {r['M']}, U = {r['U']}, {r['slots']} slots of "
         f"{r['slot_s']} s per run, {r['pairs']} pairs in ABBA order, seeds {r['seed']}..{r['seed'] + r['pairs'] - 1}; "
         f"chain.outside = {r['outside']}, contract.payment = {r['payment']})", "",
         "Per run: the mean of each term of eq. (11) over its slots. Below: the mean over runs ± the 95 % "
         "Student-t half-width over run means, and the paired difference per pair (same seed, same task streams).", "",
         f"| term | {a} | {b} | {a} − {b} (±95 %) | beyond chance |", "|---|---|---|---|---|"]
    for key, label, _ in TERMS:
        pa, pb, d = r["per_policy"][a][key], r["per_policy"][b][key], r["difference"][key]
        L.append(f"| {label} | {pa['mean']:.3f} ± {pa['ci95']:.3f} | {pb['mean']:.3f} ± {pb['ci95']:.3f} | "
                 f"{d['difference']:+.3f} ± {d['ci95']:.3f} | {'yes' if d['beyond_chance'] else 'no: within chance'} |")
    u = r["difference"]["utility"]
    L += ["", (f"**Verdict**: {a if u['difference'] > 0 else b} has the higher utility per slot, by "
               f"{abs(u['difference']):.3f} ± {u['ci95']:.3f} (95 %, {u['pairs']} pairs): "
               + ("beyond chance." if u["beyond_chance"] else "within chance: these runs cannot tell the policies "
                  "apart; more runs narrow the interval (about as 1/√runs)."))]
    L += ["", "| pair | policy | seed | utility | mining | revenue | latency s | tasks done/offered | "
              "MEC blocks / expected | books close | wall s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for x in sorted(r["runs"], key=lambda x: (x["pair"], x["policy"])):
        if "error" in x:
            L.append(f"| {x['pair']} | {x['policy']} | {x['seed']} | failed: {x['error']} |")
            continue
        ch = x.get("chain") or {}
        L.append(f"| {x['pair']} | {x['policy']} | {x['seed']} | {x['utility']:.3f} | {x['mining']:.3f} | "
                 f"{x['revenue']:.3f} | {x['latency']:.3f} | {x['tasks']['completed']}/{x['tasks']['offered']} | "
                 f"{ch.get('mec_blocks', '')} / {ch.get('expected_mec_blocks_per_slot', 0) * x['slots']:.1f} | "
                 f"{x['books_close']} | {x['wall_s']} |")
    L += ["", "![compare](compare.png)", ""]
    return "\n".join(L)


def plots(r: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(TERMS), figsize=(4 * len(TERMS), 3.8))
    for ax, (key, label, _) in zip(axes, TERMS):
        for j, name in enumerate(r["policies"]):
            st = r["per_policy"][name][key]
            vals = [x[key] for x in r["runs"] if "error" not in x and x["policy"] == name]
            ax.errorbar([j], [st["mean"]], yerr=[0 if not np.isfinite(st["ci95"]) else st["ci95"]], fmt="o",
                        capsize=6, color=f"C{j}")
            ax.scatter([j + 0.12] * len(vals), vals, s=12, color=f"C{j}", alpha=0.6)
        ax.set_xticks(range(len(r["policies"])), r["policies"])
        ax.set_xlim(-0.5, len(r["policies"]) - 0.5)
        d = r["difference"][key]
        ax.set_title(f"{label}\nΔ {d['difference']:+.3f} ± {d['ci95']:.3f}", fontsize=9)
    fig.suptitle("mean over runs ± 95 % (dots: run means)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
