"""The report of a live run: per-task CSV, per-slot CSV, ``summary.json``, plots, ``summary.md``.

Reads what the run's programs wrote (each UE client's ``ues/<ue>/tasks.jsonl``, each executor's
``lab/executors/<mec>.jsonl``) and what the run loop measured (slots, chain audit, blocks,
resources), and computes:

- tasks offered / completed / failed / refunded / dropped, and deadline misses (τ_u);
- latency p50/p95/p99 per component: payment (until the escrow is mined), upload, queue,
  compute, download, settlement (until the completion is mined), service (upload to result)
  and end to end; throughput (tasks/s);
- gas per call; payments settled and refunded (wei); blocks per miner;
- the CPU coupling of mining and computing, κ, fitted from the executors' compute times
  against their miners' CPU quotas (:func:`coupling`);
- CPU (cores) and memory (MiB) per component, peak machine memory.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from testbed.experiments.metrics import clean_json

COMPONENTS = ("wait_s", "payment_s", "upload_s", "queue_s", "compute_s", "download_s", "settlement_s",
              "service_s", "e2e_s")


def _pct(values) -> dict:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if not v.size:
        return {"n": 0}
    return {"n": int(v.size), "mean": float(v.mean()), "p50": float(np.percentile(v, 50)),
            "p95": float(np.percentile(v, 95)), "p99": float(np.percentile(v, 99)), "max": float(v.max())}


def read_jsonl(paths) -> list[dict]:
    out = []
    for p in paths:
        for line in Path(p).read_text().splitlines():
            if line.strip():
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
    return out


def executor_logs(run_dir: Path) -> list[Path]:
    """Each executor's own log (``lab/executors/<mec>.jsonl``; not its voucher or completion log)."""
    return sorted(p for p in (Path(run_dir) / "lab" / "executors").glob("*.jsonl")
                  if not p.name.endswith(("-vouchers.jsonl", "-completions.jsonl")))


def level_at(slots: list[dict], mec: str, t: float) -> int | None:
    """The hash level of ``mec`` in force at time ``t``: that of the last accepted slot decided
    before ``t`` (``slots`` in time order)."""
    level = None
    for s in slots:
        if s.get("status") == 200 and s["t"] <= t:
            level = s["levels"].get(mec)
    return level


def coupling(executor_recs: list[dict], slots: list[dict], mapping: dict, calibration_rate: float) -> dict:
    """κ from measurements: the executor's CPU share during each task (kernel iterations per
    second over the calibrated iterations per core-second) against its miner's CPU quota at
    the time (from the slot in force). A least-squares line cores_exec = a - b·cores_miner;
    in the model's units κ = b · (mining_cores / P) · (f_m / host_cores) GHz per MHash/s."""
    levels_cores = mapping["levels_cores"]
    xs, ys = [], []
    for r in executor_recs:
        if r.get("event") != "served" or not r.get("compute_s") or r.get("dishonest"):
            continue
        t_start = r["t"] - r.get("send_s", 0) - r["compute_s"]
        level = level_at(slots, r["mec"], t_start)
        if level is None:
            continue
        xs.append(levels_cores[level])
        ys.append(r["iterations"] / r["compute_s"] / calibration_rate)
    out = {"tasks": len(xs)}
    if len(set(xs)) >= 2:
        b, a = np.polyfit(xs, ys, 1)
        b = -b
        kappa = b * (mapping["mining_cores"] / mapping["hash_budget_mhs"]) * (mapping["cpu_ghz"] / mapping["executor_cores"])
        out.update(exec_cores_at_zero_mining=float(a), task_cores_lost_per_mining_core=float(b),
                   kappa_ghz_per_mhs=float(kappa),
                   by_miner_cores={f"{x:.4f}": float(np.mean([y for xx, y in zip(xs, ys) if xx == x]))
                                   for x in sorted(set(xs))})
    elif xs:
        out["note"] = "every task ran at one miner quota: no slope to fit (vary the budgets)"
        out["exec_cores_mean"] = float(np.mean(ys))
    return out


def chain_stats(scn, blocks: list[dict], slots: list[dict], mec_addresses: set[str], t_window,
                hps_per_mhs: float | None = None) -> dict:
    """The chain over the policy's slots: blocks, MEC and outside blocks, the block interval, the
    difficulty at the start and the end (and its drift), the uncle rate, the realised MEC blocks
    against the expected Σ p̂_m / H per slot (eq. (4), from the measured hash), and the miners'
    own hash rate (geth's meter) against the calibrated rate at the CPU they used."""
    if not blocks or not t_window:
        return {}
    t0, t1 = t_window
    inside = [b for b in blocks if t0 <= b["timestamp"] <= t1 + 1]
    if not inside:
        return {"blocks": 0, "note": "no block was mined during the slots"}
    mec = sum(b["miner"] in mec_addresses for b in inside)
    uncles = sum(len(b["uncles"]) for b in inside)
    times = [b["timestamp"] for b in inside]
    d0, d1 = inside[0]["difficulty"], inside[-1]["difficulty"]
    expected = sum(float(s.get("expected_mec_blocks") or 0.0) for s in slots)
    realised = sum(sum(s.get("blocks") or []) for s in slots)
    n = len(slots) or 1
    hash_mean = np.mean([s["hash_mhs"] for s in slots if s.get("hash_mhs")], axis=0) if any(
        s.get("hash_mhs") for s in slots) else None
    geth = [sum(s.get("geth_hashrate_hps") or []) for s in slots if s.get("geth_hashrate_hps")]
    out = {"blocks": len(inside), "mec_blocks": mec, "outside_blocks": len(inside) - mec,
           "uncles": uncles, "uncle_rate": uncles / (len(inside) + uncles),
           "block_interval_s": float(np.mean(np.diff(times))) if len(times) > 1 else None,
           "difficulty_start": d0, "difficulty_end": d1, "difficulty_drift": d1 / d0 - 1,
           "genesis_difficulty": blocks[0]["difficulty"] if blocks[0]["number"] == 1 else None,
           "mec_blocks_per_slot": realised / n, "expected_mec_blocks_per_slot": expected / n,
           "realised_over_expected": realised / expected if expected > 0 else None,
           "hash_mhs_mean": hash_mean.tolist() if hash_mean is not None else None,
           "hash_mhs_total_mean": float(hash_mean.sum()) if hash_mean is not None else None,
           "network_hash_mhs": scn.model.network_hash_mhs, "outside": scn.chain.outside}
    if geth and hash_mean is not None and hps_per_mhs:
        # geth's own meter (a 1-minute EWMA) against the calibrated rate at the CPU really used
        calibrated = float(np.mean([sum(s["hash_mhs"]) for s in slots if s.get("geth_hashrate_hps")])) * hps_per_mhs
        out.update(geth_hashrate_hps_mean=float(np.mean(geth)), calibrated_hashrate_hps_mean=calibrated,
                   geth_over_calibrated=float(np.mean(geth)) / calibrated if calibrated > 0 else None)
    return out


def summarize(scn, run_dir: Path, res: dict) -> dict:
    tasks = [r for r in read_jsonl(sorted((run_dir / "ues").glob("*/tasks.jsonl"))) if "task_id" in r]
    regs = [r for r in read_jsonl(sorted((run_dir / "ues").glob("*/tasks.jsonl"))) if r.get("event") == "createTrade"]
    execs = read_jsonl(executor_logs(run_dir))
    outcomes: dict[str, int] = {}
    for t in tasks:
        outcomes[t.get("outcome", "?")] = outcomes.get(t.get("outcome", "?"), 0) + 1
    done = [t for t in tasks if t.get("outcome") == "completed"]
    failed = [t for t in tasks if t.get("outcome") in ("wrong_result", "hash_mismatch")]
    refunded = [t for t in tasks if str(t.get("outcome", "")).startswith("refunded")]
    paid = [t for t in tasks if "paid_wei" in t]
    misses = [t for t in done if t.get("service_s", 0) > t["desired_s"]]
    slots = res.get("slots", [])
    span = (res["t_slots"][1] - res["t_slots"][0]) if res.get("t_slots") else float("nan")
    opens = [r for r in read_jsonl(sorted((run_dir / "ues").glob("*/tasks.jsonl"))) if r.get("event") in
             ("openChannel", "topUp")]
    redeems = [r for r in execs if r.get("event") == "redeemed" and "gas" in r]
    gas = {"createTrade": _pct([r["gas"] for r in regs]),
           "trading": _pct([t.get("trading_gas") for t in tasks]),
           "complete": _pct([r.get("complete_gas") for r in execs if r.get("event") == "served"]),
           "refund": _pct([t.get("refund_gas") for t in tasks]),
           "openChannel": _pct([r["gas"] for r in opens if r["event"] == "openChannel"]),
           "topUp": _pct([r["gas"] for r in opens if r["event"] == "topUp"]),
           "redeem": _pct([r["gas"] for r in redeems])}
    # every payment transaction of the run over the tasks it paid for (registration included)
    payment_gas = (sum(r["gas"] for r in regs) + sum(t.get("trading_gas") or 0 for t in tasks)
                   + sum(r.get("complete_gas") or 0 for r in execs if r.get("event") == "served")
                   + sum(t.get("refund_gas") or 0 for t in tasks) + sum(r["gas"] for r in opens)
                   + sum(r["gas"] for r in redeems))
    gas["per_paid_task"] = {"payment_gas": payment_gas, "tasks": len(done),
                            "gas_per_task": payment_gas / len(done) if done else None,
                            "redeem_transactions": len(redeems),
                            "vouchers_redeemed": sum(r.get("vouchers", 0) for r in redeems)}
    resources = {}
    for name in (res.get("resources") or [{}])[0]:
        if name == "t":
            continue
        rows = [r[name] for r in res["resources"] if name in r]
        resources[name] = {"cores_mean": float(np.mean([r["cores"] for r in rows])),
                           "cores_max": float(np.max([r["cores"] for r in rows])),
                           "rss_mib_max": float(np.max([r["rss_mib"] for r in rows]))}
    failed_by_mec: dict[str, int] = {}
    for t in failed:
        failed_by_mec[t.get("mec", "?")] = failed_by_mec.get(t.get("mec", "?"), 0) + 1
    applied = [s["slot_to_applied_s"] for s in slots if s.get("status") == 200]
    budgets = read_jsonl([run_dir / "budgets.jsonl"]) if (run_dir / "budgets.jsonl").exists() else []
    fallback = [b for b in budgets if b.get("fallback")]
    summary = {
        "scenario": scn.name, "scenario_digest": scn.digest(), "policy": res.get("policy"),
        "M": scn.model.n_servers, "U": scn.model.n_users,
        "topology": scn.topology.kind, "slots": len(slots), "slot_s": scn.model.slot_s,
        "tasks": {"offered": len(tasks), "paid": len(paid), "completed": len(done),
                  "failed": len(failed), "failed_by_server": failed_by_mec, "refunded": len(refunded),
                  "dropped_unpaid": outcomes.get("dropped", 0) + outcomes.get("stopped", 0),
                  "errors": outcomes.get("error", 0), "outcomes": outcomes,
                  "deadline_misses": len(misses), "deadline_miss_rate": len(misses) / len(done) if done else None,
                  "throughput_per_s": len(done) / span if span and span > 0 else None},
        "lost": {"tasks_paid_but_unsettled": res.get("audit", {}).get("states", {}).get("OPEN"),
                 "books_close": res.get("audit", {}).get("books_close")},
        "latency_s": {c: _pct([t.get(c) for t in done]) for c in COMPONENTS},
        "gas": gas,
        "payments": {k: res.get("audit", {}).get(k) for k in ("opened_wei", "paid_wei", "refunded_wei", "open_wei",
                                                               "contract_balance_wei")},
        "blocks_per_miner": res.get("chain", {}).get("per_miner"),
        "blocks": res.get("chain", {}).get("head"),
        "chain": chain_stats(scn, res.get("chain", {}).get("blocks") or [], slots,
                             {a.lower() for a in res.get("chain", {}).get("mec_addresses", [])},
                             res.get("t_slots"), (res.get("mapping") or {}).get("hps_per_mhs")),
        "coupling": coupling(execs, slots, res.get("mapping", {}), res.get("calibration_rate", 0.0) or
                             json.loads((run_dir / "lab" / "calibration.json").read_text())["kernel_iterations_per_core_s"])
        if (run_dir / "lab" / "calibration.json").exists() else {},
        "decision": {"decision_ms": _pct([s["decision_ms"] for s in slots]),
                     "agent_ms": _pct([s.get("agent_ms") for s in slots]),
                     "agent_cpu_ms": _pct([s.get("decision_cpu_ms") for s in slots]),
                     "slot_start_to_applied_s": _pct(applied)},
        "utility": {"per_slot": [s.get("utility") for s in slots],
                    "mean": float(np.mean([s["utility"] for s in slots])) if slots else None,
                    "mining_reward_mean": float(np.mean([s["mining_reward"] for s in slots])) if slots else None,
                    "revenue_mean": float(np.mean([s["revenue"] for s in slots])) if slots else None,
                    "latency_mean_s": float(np.mean([s["latency_s"] for s in slots])) if slots else None},
        "refused_assignments": [s for s in slots if s.get("status") != 200],
        # per server: UEs the policy gave it over the run, and its reputation at the end
        "per_server": {m: {"assigned": sum(1 for s in slots if (s.get("serve") or {}).get(m)),
                           "reputation_last": (slots[-1].get("reputation") or {}).get(m) if slots else None,
                           "mean_level": float(np.mean([s["levels"][m] for s in slots if m in (s.get("levels") or {})]))
                           if slots else None}
                       for m in ((slots[0].get("levels") or {}) if slots else {})},
        # slots the controller decided itself because no policy decision came (a crashed or
        # late policy): their number and when (budgets.jsonl has each one)
        "fallback": {"assignments": len(fallback),
                     "during_slots": sum(1 for b in fallback if res.get("t_slots")
                                         and res["t_slots"][0] <= b["decided_at"] <= res["t_slots"][1]),
                     "decided_at": [b["decided_at"] for b in fallback][:50]},
        "resources": resources,
        "machine_peak_used_mib": max((m["used_mib"] for m in res.get("machine", [])), default=None),
        "lab_peak_memory_mib": (max((m["used_mib"] for m in res.get("machine", [])), default=float("nan"))
                                - res.get("machine_used_before_mib", float("nan"))),
        "run_dir": res.get("run_dir"),
        "bring_up": res.get("bring_up"), "teardown_s": res.get("teardown_s"), "drain": res.get("drain"),
        "attack": {k: v for k, v in (res.get("attack") or {}).items() if k != "from"} or None,
        "total_s": res.get("total_s"), "notes": res.get("notes"), "mapping": res.get("mapping"),
        "audit": res.get("audit"),
    }
    return summary, tasks, execs


def write_csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)


def plots(run_dir: Path, summary: dict, tasks: list[dict], slots: list[dict]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    done = [t for t in tasks if t.get("outcome") == "completed"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    ax = axes[0][0]
    comps = ["payment_s", "upload_s", "queue_s", "compute_s", "download_s", "settlement_s"]
    data = [[t[c] for t in done if t.get(c) is not None] for c in comps]
    if any(data):
        ax.boxplot([d or [0] for d in data], tick_labels=[c[:-2] for c in comps], showfliers=False)
    ax.set_ylabel("seconds")
    ax.set_title(f"latency per component ({len(done)} completed tasks)")
    ax = axes[0][1]
    if slots:
        ax.plot([s["slot"] for s in slots], [s["served"] for s in slots], label="assigned")
        ax.plot([s["slot"] for s in slots], [s["waiting"] for s in slots], label="waiting")
        ax.legend()
    ax.set_xlabel("slot")
    ax.set_title("UEs per slot")
    ax = axes[1][0]
    per = summary.get("blocks_per_miner") or {}
    if per:
        ax.bar(list(per), [v["blocks"] for v in per.values()])
    ax.set_title(f"blocks per miner ({summary.get('blocks')} in all)")
    ax.tick_params(axis="x", rotation=45)
    ax = axes[1][1]
    if slots and slots[0].get("reputation"):
        for m in slots[0]["reputation"]:
            ax.plot([s["slot"] for s in slots], [s["reputation"].get(m, np.nan) for s in slots], label=m)
        ax.legend(fontsize=6, ncol=2)
    ax.set_xlabel("slot")
    ax.set_title("reputation Υ_m (measured)")
    fig.suptitle(f"{summary['scenario']}: M={summary['M']}, U={summary['U']}, policy {summary['policy']}")
    fig.tight_layout()
    fig.savefig(run_dir / "summary.png", dpi=110)
    plt.close(fig)


def markdown(summary: dict) -> str:
    t, lat, gas = summary["tasks"], summary["latency_s"], summary["gas"]
    L = [f"# Live run: {summary['scenario']} (M = {summary['M']}, U = {summary['U']}, {summary['topology']}, "
         f"policy {summary['policy']})", "",
         f"{summary['slots']} slots of {summary['slot_s']} s. Bring-up {summary['bring_up'].get('bring_up_s')} s, "
         f"teardown {summary['teardown_s']} s, peak memory the lab added {summary['lab_peak_memory_mib']:.0f} MiB "
         f"(machine {summary['machine_peak_used_mib']:.0f} MiB in use at the peak).", "",
         "## Tasks", "",
         f"offered {t['offered']}, paid {t['paid']}, completed {t['completed']}, failed {t['failed']} "
         f"{t['failed_by_server'] or ''}, refunded {t['refunded']}, dropped unpaid {t['dropped_unpaid']}, "
         f"errors {t['errors']}; deadline misses {t['deadline_misses']}; throughput "
         f"{(t['throughput_per_s'] or 0):.2f} tasks/s.", "",
         f"Books: every escrow settled = {summary['lost']['tasks_paid_but_unsettled'] == 0}, "
         f"balances add up = {summary['lost']['books_close']}. Slots the controller's fallback decided "
         f"(no policy decision in time): {summary['fallback']['during_slots']} during the policy's slots, "
         f"{summary['fallback']['assignments'] - summary['fallback']['during_slots']} while draining after them.", "",
         "## Latency (s, completed tasks)", "", "| component | n | p50 | p95 | p99 | max |", "|---|---|---|---|---|---|"]
    for c, v in lat.items():
        if v.get("n"):
            L.append(f"| {c[:-2]} | {v['n']} | {v['p50']:.3f} | {v['p95']:.3f} | {v['p99']:.3f} | {v['max']:.3f} |")
    L += ["", "## Gas per call", "", "| call | n | median |", "|---|---|---|"]
    for c, v in gas.items():
        if v.get("n"):
            L.append(f"| {c} | {v['n']} | {v['p50']:,.0f} |")
    pt = gas.get("per_paid_task") or {}
    if pt.get("gas_per_task"):
        L += ["", f"All payment transactions of the run: {pt['payment_gas']:,} gas for {pt['tasks']} paid tasks, "
                  f"{pt['gas_per_task']:,.0f} gas per task (the paper: 815,155 per user)."]
    L += ["", "## Servers", "", "| server | UEs assigned | mean hash level | reputation at the end | blocks | uncles |",
          "|---|---|---|---|---|---|"]
    per = summary.get("blocks_per_miner") or {}
    for m, v in (summary.get("per_server") or {}).items():
        b = per.get(m, {})
        rep = v["reputation_last"]
        L.append(f"| {m} | {v['assigned']} | {v['mean_level']:.2f} | {'' if rep is None else f'{rep:.3f}'} | "
                 f"{b.get('blocks', '')} | {b.get('uncles', '')} |")
    ch = summary.get("chain") or {}
    if ch.get("blocks"):
        L += ["", f"## The chain (chain.outside = {ch['outside']}, H = {ch['network_hash_mhs']:g} MHash/s)", "",
              f"{ch['blocks']} blocks during the slots ({ch['mec_blocks']} by the MEC servers, {ch['outside_blocks']} "
              f"by an outside miner), {ch['uncles']} uncles (rate {ch['uncle_rate']:.3f}); block interval "
              f"{(ch['block_interval_s'] or float('nan')):.1f} s; difficulty {ch['difficulty_start']:,} -> "
              f"{ch['difficulty_end']:,} ({ch['difficulty_drift']:+.1%}). MEC blocks per slot: realised "
              f"{ch['mec_blocks_per_slot']:.3f}, expected Σ p̂_m / H {ch['expected_mec_blocks_per_slot']:.3f} "
              f"(ratio {(ch['realised_over_expected'] or float('nan')):.2f}). Hash really done Σ p̂_m "
              f"{(ch.get('hash_mhs_total_mean') or float('nan')):.1f} MHash/s; geth's own meter over the calibrated "
              f"rate at the CPU used: {(ch.get('geth_over_calibrated') or float('nan')):.2f}."]
    c = summary.get("coupling") or {}
    L += ["", "## CPU coupling of mining and computing (κ)", "", f"```\n{json.dumps(c, indent=1)}\n```", "",
          "## Resources", "", "| part | mean cores | max cores | max RSS MiB |", "|---|---|---|---|"]
    for name, v in summary["resources"].items():
        L.append(f"| {name} | {v['cores_mean']:.3f} | {v['cores_max']:.3f} | {v['rss_mib_max']:.0f} |")
    L += ["", "## Notes", ""] + [f"- {n}" for n in summary.get("notes") or []] + ["", "![summary](summary.png)", ""]
    return "\n".join(L)


def write(scn, run_dir: Path, res: dict) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    summary, tasks, execs = summarize(scn, run_dir, res)
    fields = ["ue", "task_id", "mec", "slot", "outcome", "data_mb", "demand", "desired_s", "gcycles", *COMPONENTS,
              "request_s", "result_wait_s", "paid_wei", "trading_gas", "trading_fee_wei", "deadline", "pay_block",
              "complete_block", "refund_gas", "refunded_wei", "error", "t_start", "t_end"]
    write_csv(run_dir / "tasks.csv", tasks, fields)
    slots = res.get("slots", [])
    write_csv(run_dir / "slots.csv", [{**s, "serve": json.dumps(s["serve"]), "levels": json.dumps(s["levels"]),
                                       "reputation": json.dumps(s["reputation"])} for s in slots],
              ["slot", "t", "policy", "decision_ms", "agent_ms", "put_ms", "slot_to_applied_s", "status", "served",
               "waiting", "serve", "levels", "reputation", "utility", "mining_reward", "revenue", "latency_s",
               "n_served", "error"])
    (run_dir / "summary.json").write_text(json.dumps(clean_json(summary), indent=1))
    (run_dir / "raw.json").write_text(json.dumps(clean_json({k: v for k, v in res.items() if k != "chain"}), indent=1))
    plots(run_dir, summary, tasks, slots)
    (run_dir / "summary.md").write_text(markdown(summary))
    return summary
