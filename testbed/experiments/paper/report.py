"""Statistics, CSVs, plots and the Markdown report of the paper's experiments.

Input: the rows of :func:`testbed.experiments.paper.runner.run_job` for every reading. Output
in the output folder: ``runs.csv`` (every run), per reading ``<reading>/fig{4,5,6,7,7_fee}.csv``
and ``table2.csv``, one PNG per figure with one panel per reading (``fig5.png`` ...),
``summary.json`` and ``summary.md`` with the claim-by-claim table: for each claim of the
paper's section V, whether each reading reproduces it, with the numbers.

Every comparison is paired by seed (all algorithms see the same evaluation tasks) and judged
by its 95 % Student-t interval over seeds: "yes" when the interval lies on the paper's side
of zero, "no" when it lies on the other side, "n.s." when it contains zero.
"""
from __future__ import annotations

import csv
import json
import math
import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

from testbed.experiments.stats import ci95  # noqa: F401  (re-exported: the paper runner and tests use it here)

ALGOS = ("ddqn", "dqn", "qlearning", "ga", "greedy", "random", "oracle")
LEARNERS = ("ddqn", "dqn", "qlearning")
FIG7_SERIES = ("full", "no_ra_equal", "no_ra_random", "no_us", "oracle")
LABELS = {"ddqn": "Double DQN (proposed)", "dqn": "Classic DQN", "qlearning": "Q-learning (RL)",
          "ga": "Genetic algorithm", "greedy": "Greedy heuristic", "random": "Random", "oracle": "One-slot oracle",
          "full": "Full design (DDQN)", "no_ra_equal": "Without resource allocation: equal split",
          "no_ra_random": "Without resource allocation: random levels (paper's prior practice)",
          "no_us": "Without user selection"}
STYLES = {"ddqn": ("C3", "o"), "dqn": ("C0", "s"), "qlearning": ("C2", "^"), "ga": ("C4", "v"),
          "greedy": ("C5", "D"), "random": ("C7", "x"), "oracle": ("k", "*"), "full": ("C3", "o"),
          "no_ra_equal": ("C1", "s"), "no_ra_random": ("C6", "P"), "no_us": ("C9", "^")}
FIGURES = {"fig5": "number of UEs U", "fig6": "service demand ξ", "fig7": "block size b (KB)",
           "fig7_fee": "block size b (KB)"}

# The paper's Table II (ECL in s, ART in s) for N = 10, 20, 30.
PAPER_TABLE2 = {
    "ga": {10: (63.03, 12804), 20: (89.05, 18048), 30: (145.97, 26889)},
    "qlearning": {10: (61.54, 29.12), 20: (84.21, 131.02), 30: (119.34, 538.33)},
    "dqn": {10: (59.67, 26.09), 20: (80.90, 127.71), 30: (110.38, 478.19)},
    "ddqn": {10: (53.42, 21.54), 20: (74.09, 122.38), 30: (99.05, 445.63)},
}


# --- statistics (the one interval: testbed.experiments.stats.ci95) ---------------------------

def by_seed(rows: list[dict], reading: str, figure: str, series: str, x=None, key: str = "avg_utility") -> dict:
    """{x: {seed: value}} (or {seed: value} when ``x`` is given) of one series."""
    out: dict[float, dict[int, float]] = {}
    for r in rows:
        if r["reading"] == reading and r["figure"] == figure and r["series"] == series and r.get(key) is not None:
            out.setdefault(r["x"], {})[r["seed"]] = r[key]
    return out if x is None else out.get(float(x), {})


def aggregate(rows: list[dict], reading: str, figure: str, key: str = "avg_utility") -> dict:
    """{series: {"x": [...], "mean": [...], "ci95": [...], "per_seed": [[...]]}} of one figure."""
    series = sorted({r["series"] for r in rows if r["reading"] == reading and r["figure"] == figure},
                    key=lambda s: (list(LABELS).index(s) if s in LABELS else 99, s))
    res = {}
    for s in series:
        data = by_seed(rows, reading, figure, s, key=key)
        if not data:
            continue
        xs = sorted(data)
        st = [ci95(data[x].values()) for x in xs]
        res[s] = {"x": xs, "mean": [m for m, _ in st], "ci95": [h for _, h in st],
                  "per_seed": [[data[x][k] for k in sorted(data[x])] for x in xs]}
    return res


def paired(a: dict[int, float], b: dict[int, float]) -> tuple[float, float, int]:
    """Mean and 95 % half-width of a - b over the seeds both have, and how many."""
    common = sorted(set(a) & set(b))
    m, h = ci95([a[s] - b[s] for s in common])
    return m, h, len(common)


def slope(rows: list[dict], reading: str, figure: str, series: str, key: str = "avg_utility") -> tuple[float, float]:
    """Least-squares slope of the series against x, per seed; mean and 95 % half-width over seeds."""
    data = by_seed(rows, reading, figure, series, key=key)
    xs = sorted(data)
    if len(xs) < 2:
        return float("nan"), float("nan")
    seeds = sorted(set.intersection(*(set(data[x]) for x in xs)))
    per = [np.polyfit(xs, [data[x][s] for x in xs], 1)[0] for s in seeds]
    return ci95(per)


def verdict(m: float, h: float, sign: int = 1) -> str:
    """'yes' if the interval is on the claimed side of 0 (sign +1: positive), 'no' if on the other, else 'n.s.'."""
    if m != m:
        return "n/a"
    if h != h:
        h = 0.0
    if sign * m - h > 0:
        return "yes"
    if sign * m + h < 0:
        return "no"
    return "n.s."


def _fmt(m, h=None, nd=3) -> str:
    if m is None or m != m:
        return "n/a"
    return f"{m:.{nd}f}" if h is None or h != h else f"{m:.{nd}f} ± {h:.{nd}f}"


def _sfmt(m, h, nd=3) -> str:
    return "n/a" if m != m else (f"{m:+.{nd}f}" if h != h else f"{m:+.{nd}f} ± {h:.{nd}f}")


# --- one reading ------------------------------------------------------------------------------

def reading_summary(rows: list[dict], reading: str, pc, mcfg) -> dict:
    """Figures, Table II, 'does learning matter' and the comparisons of one reading."""
    from agent.model import latency_weight_threshold
    out: dict[str, Any] = {"model": {k: v for k, v in mcfg.to_dict().items()},
                           "overrides": dict(pc.readings[reading]),
                           "w": mcfg.latency_weight, "w_star": latency_weight_threshold(mcfg),
                           "demand_reading": mcfg.demand_reading, "kappa": mcfg.cpu_per_mhs}
    # Fig. 4: learning curves and convergence
    fig4 = {}
    for algo in LEARNERS:
        rs = sorted((r for r in rows if r["reading"] == reading and r["figure"] == "fig4" and r["series"] == algo
                     and "curve" in r), key=lambda r: r["seed"])
        if not rs:
            continue
        W = pc.convergence_window
        ma = np.array([np.convolve(r["curve"], np.ones(W) / W, mode="valid") for r in rs])
        st = [ci95(ma[:, i]) for i in range(ma.shape[1])]
        conv = [r["convergence_slot"] for r in rs]
        fig4[algo] = {"slot": list(range(W, W + ma.shape[1])), "mean": [m for m, _ in st], "ci95": [h for _, h in st],
                      "convergence_slot": ci95(conv), "convergence_slot_per_seed": conv,
                      "never_converged": sum(c is None for c in conv),
                      "final_utility": ci95([r["train_final_utility"] for r in rs]),
                      "final_per_seed": {r["seed"]: r["train_final_utility"] for r in rs},
                      "conv_per_seed": {r["seed"]: r["convergence_slot"] for r in rs},
                      "train_seconds": ci95([r["train_seconds"] for r in rs])[0],
                      "seconds_to_convergence": ci95([r["seconds_to_convergence"] for r in rs])[0]}
    out["fig4"] = fig4
    for fig in FIGURES:
        out[fig] = aggregate(rows, reading, fig)
    # Table II
    t2: dict[str, dict] = {}
    for algo in ALGOS:
        for n in pc.users_grid:
            rs = [r for r in rows if r["reading"] == reading and r["figure"] == "fig5" and r["series"] == algo
                  and r["n_users"] == n]
            if rs:
                t2.setdefault(algo, {})[str(n)] = {k: ci95([r.get(k) for r in rs])[0] for k in
                                                   ("ecl_s", "train_seconds", "decision_ms", "decision_ms_p99",
                                                    "drops_per_slot", "served_gcycles", "waiting_gcycles")}
    out["table2"] = t2
    # Does learning matter: share of the random-to-oracle gap each scheme closes (Fig. 5 points).
    lm: dict[str, dict] = {}
    for n in pc.users_grid:
        rnd, orc = by_seed(rows, reading, "fig5", "random", n), by_seed(rows, reading, "fig5", "oracle", n)
        if not rnd or not orc:
            continue
        gap_m, gap_h, _ = paired(orc, rnd)
        cell = {"oracle": ci95(orc.values())[0], "random": ci95(rnd.values())[0], "gap": gap_m, "gap_ci95": gap_h,
                "gap_share_of_oracle": gap_m / abs(ci95(orc.values())[0]) if orc else float("nan")}
        for algo in ("ddqn", "dqn", "qlearning", "ga", "greedy"):
            a = by_seed(rows, reading, "fig5", algo, n)
            if a:
                m = ci95(a.values())[0]
                cell[algo] = (m - cell["random"]) / (cell["oracle"] - cell["random"]) if gap_m else float("nan")
        lm[str(n)] = cell
    out["gap_closed"] = lm
    vs: dict[str, dict] = {}
    for n in pc.users_grid:
        a, b, o = (by_seed(rows, reading, "fig5", k, n) for k in ("ddqn", "dqn", "oracle"))
        common = sorted(set(a) & set(b))
        if len(common) >= 2 and o:
            diffs = np.array([a[s] - b[s] for s in common])
            m, h = ci95(diffs)
            remaining = ci95(o.values())[0] - ci95(b.values())[0]
            sd = float(diffs.std(ddof=1))
            need = int(math.ceil((2 * sd / abs(remaining)) ** 2)) if remaining and sd > 0 else None
            vs[str(n)] = {"diff": m, "ci95": h, "remaining_gap": remaining, "sd": sd, "seeds_needed": need}
    out["ddqn_vs_dqn"] = vs
    return out


# --- the paper's claims --------------------------------------------------------------------------

def claims(rows: list[dict], summaries: dict[str, dict], pc) -> list[dict]:
    """Each claim of the paper's section V with, per reading, a verdict and the number behind it."""
    readings = list(summaries)
    U_hi = max(pc.users_grid)
    out = []

    def add(cid, claim, paper, per_reading):
        out.append({"id": cid, "claim": claim, "paper": paper,
                    "readings": {r: per_reading(r) for r in readings}})

    def trend(fig, series):
        def f(r):
            m, h = slope(rows, r, fig, series)
            v = verdict(m, h, +1)
            word = {"yes": "rises", "no": "falls", "n.s.": "flat (n.s.)", "n/a": "n/a"}[v]
            return {"verdict": v, "text": f"{word}: slope {_sfmt(m, h)}", "value": m, "ci95": h}
        return f

    def diff(fig, a, b, xs, sign=+1, key="avg_utility"):
        """Claim 'a > b' (sign +1) at every x of xs: yes if yes at all, no if no at any, else n.s."""
        def f(r):
            parts, vs = [], []
            for x in xs:
                m, h, n = paired(by_seed(rows, r, fig, a, x, key), by_seed(rows, r, fig, b, x, key))
                vs.append(verdict(m, h, sign))
                parts.append(f"{x:g}: {_sfmt(m, h)}")
            v = "n/a" if "n/a" in vs else "yes" if all(x == "yes" for x in vs) else "no" if "no" in vs else "n.s."
            return {"verdict": v, "text": "; ".join(parts)}
        return f

    def fig4_diff(a, b, key, sign, nd=0):
        def f(r):
            d4 = summaries[r].get("fig4", {})
            if a not in d4 or b not in d4:
                return {"verdict": "n/a", "text": "n/a"}
            pa, pb = d4[a][key], d4[b][key]
            common = [s for s in pa if pa[s] is not None and pb.get(s) is not None]
            m, h = ci95([pa[s] - pb[s] for s in common])
            never = f" (never converged: {a} {d4[a]['never_converged']}, {b} {d4[b]['never_converged']})" \
                if key == "conv_per_seed" else ""
            return {"verdict": verdict(m, h, sign), "text": f"{a} − {b} = {_sfmt(m, h, nd)}{never}"}
        return f

    add("C1", "Fig. 4: Double DQN converges faster than classic DQN", "≈ 250 vs ≈ 400 slots",
        fig4_diff("ddqn", "dqn", "conv_per_seed", -1))
    add("C2", "Fig. 4: classic DQN converges faster than Q-learning", "Q-learning slowest",
        fig4_diff("dqn", "qlearning", "conv_per_seed", -1))
    add("C3", "Fig. 4: Double DQN ends higher than classic DQN", "DQN 'with a lower system utility'",
        fig4_diff("ddqn", "dqn", "final_per_seed", +1, 3))
    add("C4", "Fig. 5: utility rises with the number of UEs (DDQN)", "rises, U = 5 … 30", trend("fig5", "ddqn"))
    add("C5", "Fig. 5: … and under the equations' own optimum (oracle)", "rises", trend("fig5", "oracle"))
    add("C6", f"Fig. 5: Double DQN above classic DQN at U = {U_hi}", "DDQN best, gap grows with U",
        diff("fig5", "ddqn", "dqn", [U_hi]))
    add("C7", f"Fig. 5: classic DQN above Q-learning, Q-learning above GA (U = {U_hi})", "DDQN > DQN > RL > GA",
        lambda r: _both(diff("fig5", "dqn", "qlearning", [U_hi])(r), diff("fig5", "qlearning", "ga", [U_hi])(r)))
    add("C8", "Fig. 5: GA lowest of the four schemes at every U", "GA lowest in all cases",
        lambda r: _all([diff("fig5", other, "ga", pc.users_grid)(r) for other in LEARNERS]))
    add("C9", "Fig. 6: utility rises with service demand (DDQN)", "rises, ξ = 0.6 … 1.6", trend("fig6", "ddqn"))
    add("C10", "Fig. 6: … and under the oracle", "rises", trend("fig6", "oracle"))
    add("C11", "Fig. 6: Double DQN above classic DQN at every ξ", "DDQN best, DQN second",
        diff("fig6", "ddqn", "dqn", pc.demand_grid))
    add("C12", "Fig. 6: Double DQN above GA and Q-learning at every ξ", "DDQN best",
        lambda r: _both(diff("fig6", "ddqn", "ga", pc.demand_grid)(r), diff("fig6", "ddqn", "qlearning", pc.demand_grid)(r)))
    for fig, what in (("fig7", "eq. (6) as printed (r = 0)"), ("fig7_fee", f"fee reading r = {pc.fee_reading_per_kb:g} token/KB")):
        tag = "C13" if fig == "fig7" else "C14"
        add(tag, f"Fig. 7: utility rises with block size, {what}", "rises", trend(fig, "full"))
        add(tag + "a", f"Fig. 7: full design above 'without resource allocation' = random hash levels, {what}",
            "full design highest", diff(fig, "full", "no_ra_random", pc.block_grid))
        add(tag + "b", f"Fig. 7: full design above 'without resource allocation' = equal split, {what}",
            "full design highest", diff(fig, "full", "no_ra_equal", pc.block_grid))
        add(tag + "c", f"Fig. 7: full design above 'without user selection', {what}", "full design highest",
            diff(fig, "full", "no_us", pc.block_grid))
    ns = [n for n in (10, 20, 30) if n in pc.users_grid]
    add("C15", "Table II: ECL of DDQN below classic DQN", "53.4 / 74.1 / 99.1 vs 59.7 / 80.9 / 110.4 s",
        diff("fig5", "ddqn", "dqn", ns, -1, "ecl_s"))
    add("C16", "Table II: ECL of DDQN below GA and Q-learning", "DDQN lowest ECL",
        lambda r: _both(diff("fig5", "ddqn", "ga", ns, -1, "ecl_s")(r), diff("fig5", "ddqn", "qlearning", ns, -1, "ecl_s")(r)))
    add("C17", "Table II: GA slowest per decision", "GA ART 100× the learners'",
        diff("fig5", "ga", "ddqn", ns, +1, "decision_ms"))
    return out


def _both(a: dict, b: dict) -> dict:
    return _all([a, b])


def _all(parts: list[dict]) -> dict:
    vs = [p["verdict"] for p in parts]
    v = "n/a" if "n/a" in vs else "yes" if all(x == "yes" for x in vs) else "no" if "no" in vs else "n.s."
    return {"verdict": v, "text": " | ".join(p["text"] for p in parts)}


# --- files ----------------------------------------------------------------------------------------

RUN_FIELDS = ["reading", "figure", "series", "algo", "variant", "x", "seed", "n_users", "avg_utility", "ecl_s",
              "mining", "revenue", "drops_per_slot", "served_gcycles", "waiting_gcycles", "train_seconds", "updates",
              "convergence_slot", "seconds_to_convergence", "train_final_utility", "decision_ms", "decision_ms_p50",
              "decision_ms_p99"]


def write_csvs(rows: list[dict], summaries: dict[str, dict], out: Path) -> None:
    with open(out / "runs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=RUN_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in sorted(rows, key=lambda r: (r["reading"], r["figure"], r["series"], r["x"], r["seed"])):
            w.writerow(r)
    for reading, s in summaries.items():
        d = out / reading
        d.mkdir(parents=True, exist_ok=True)
        with open(d / "fig4.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["algo", "slot", "moving_avg_utility_mean", "ci95"])
            for algo, v in s["fig4"].items():
                for sl, m, h in zip(v["slot"], v["mean"], v["ci95"]):
                    w.writerow([algo, sl, f"{m:.5f}", f"{h:.5f}"])
        for fig in FIGURES:
            with open(d / f"{fig}.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["series", "x", "avg_utility_mean", "ci95", "n_seeds"])
                for series, v in s[fig].items():
                    for x, m, h, ps in zip(v["x"], v["mean"], v["ci95"], v["per_seed"]):
                        w.writerow([series, x, f"{m:.5f}", f"{h:.5f}", len(ps)])
        with open(d / "table2.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["algo", "N", "ecl_s", "train_seconds", "decision_ms", "drops_per_slot", "paper_ecl_s",
                        "paper_art_s"])
            for algo, v in s["table2"].items():
                for n, c in v.items():
                    p = PAPER_TABLE2.get(algo, {}).get(int(n), (None, None))
                    w.writerow([algo, n, f"{c['ecl_s']:.4f}", f"{c['train_seconds']:.3f}", f"{c['decision_ms']:.4f}",
                                f"{c['drops_per_slot']:.3f}", p[0], p[1]])


def reading_title(name: str, s: dict) -> str:
    unit = "ξ total Gcycles" if s["demand_reading"] == "total" else "ξ Gcycles per MB"
    return f"{name}: {unit}, w = {s['w']:g} (w* = {s['w_star']:.2f}), κ = {s['kappa']:g}"


def plot(summaries: dict[str, dict], out: Path, pc) -> list[str]:
    """One PNG per figure, one panel per reading; returns the file names."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(summaries)
    files = []
    n = len(names)
    cols = min(n, 2)
    rows_ = math.ceil(n / cols)
    for fig in ("fig4",) + tuple(FIGURES):
        f, axes = plt.subplots(rows_, cols, figsize=(6.5 * cols, 4.2 * rows_), squeeze=False)
        for ax, name in zip(axes.ravel(), names):
            s = summaries[name]
            if fig == "fig4":
                for algo, d in s["fig4"].items():
                    c = STYLES[algo][0]
                    m, h = np.array(d["mean"]), np.nan_to_num(np.array(d["ci95"]))
                    cm = d["convergence_slot"][0]
                    ax.plot(d["slot"], m, color=c, label=LABELS[algo] + (f" (conv. ≈ {cm:.0f})" if cm == cm else ""))
                    ax.fill_between(d["slot"], m - h, m + h, color=c, alpha=0.2)
                ax.set_xlabel("time slot")
                ax.set_ylabel(f"utility, {pc.convergence_window}-slot mean")
            else:
                for series, d in s[fig].items():
                    c, mk = STYLES.get(series, ("C1", "o"))
                    ax.errorbar(d["x"], d["mean"], yerr=np.nan_to_num(d["ci95"]), color=c, marker=mk, capsize=3,
                                label=LABELS.get(series, series), linestyle="--" if series == "oracle" else "-")
                ax.set_xlabel(FIGURES[fig])
                ax.set_ylabel("average utility (token/slot)")
            ax.set_title(reading_title(name, s), fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
        for ax in axes.ravel()[n:]:
            ax.set_visible(False)
        title = {"fig4": f"Fig. 4: convergence (M = 10, U = {pc.fig4_users})",
                 "fig5": "Fig. 5: utility vs number of UEs", "fig6": "Fig. 6: utility vs service demand",
                 "fig7": "Fig. 7: utility vs block size, eq. (6) as printed",
                 "fig7_fee": f"Fig. 7: utility vs block size, fee r = {pc.fee_reading_per_kb:g} token/KB, every series"}[fig]
        f.suptitle(f"{title}; {pc.seeds} seeds, 95 % CI", fontsize=11)
        f.tight_layout()
        f.savefig(out / f"{fig}.png", dpi=110)
        plt.close(f)
        files.append(f"{fig}.png")
    return files


MARK = {"yes": "✔ yes", "no": "✘ no", "n.s.": "– n.s.", "n/a": "n/a"}


def markdown(summaries: dict[str, dict], claim_rows: list[dict], meta: dict, pc) -> str:
    names = list(summaries)
    L = ["# The paper's claims under each reading", "",
         f"Generated by `python -m testbed paper` for scenario `{meta['scenario']}` (digest "
         f"{meta['scenario_digest'][:12]}) ({meta['engine']}, {meta['workers']} workers) on "
         f"{meta['cpus']} CPUs; {meta['runs']} distinct runs: {meta['ran']} computed by this call in "
         f"{meta['wall_seconds']:.0f} s wall, {meta['resumed']} resumed from runs.jsonl (computed by earlier "
         f"calls). {pc.seeds} seeds per point; ± is the 95 % Student-t "
         f"interval over seeds, comparisons are paired by seed. Learners train {pc.train_slots} slots "
         f"(Fig. 4: {pc.fig4_slots}), then are evaluated frozen for {pc.eval_slots} slots on a stream shared by "
         "all schemes. The readings are defined in docs/model.md §5.", ""]
    if meta.get("failed"):
        L += [f"**{len(meta['failed'])} runs failed** and are missing below: " +
              ", ".join(sorted(meta["failed"])[:20]), ""]
    L += ["## Readings", "", "| reading | ξ unit | w (token/s) | w* = threshold of Fig. 6 | κ | Fig. 6 by first order |",
          "|---|---|---|---|---|---|"]
    for n in names:
        s = summaries[n]
        star = " (paper scenario's default)" if n == pc.default_reading else ""
        L.append(f"| `{n}`{star} | {'total Gcycles' if s['demand_reading'] == 'total' else 'Gcycles per MB'} | "
                 f"{s['w']:g} | {s['w_star']:.3f} | {s['kappa']:g} | "
                 f"{'rises (w < w*)' if s['w'] < s['w_star'] else 'falls (w > w*)'} |")
    L += ["", "w* = µ·f/d̄ for ξ per MB, µ·f for ξ total (f: CPU left for tasks at an equal hash split).", "",
          "## Claim by claim", "",
          "✔ yes: reproduced (95 % interval on the paper's side); ✘ no: the opposite is significant; "
          "– n.s.: not significant. Numbers are paired differences (token/slot, slots, s or ms) or slopes "
          "(token/slot per unit of x).", "",
          "| claim | paper | " + " | ".join(f"`{n}`" for n in names) + " |", "|---|---|" + "---|" * len(names)]
    for c in claim_rows:
        cells = [f"{MARK[c['readings'][n]['verdict']]}<br><sub>{c['readings'][n]['text']}</sub>" for n in names]
        L.append(f"| {c['id']}. {c['claim']} | {c['paper']} | " + " | ".join(cells) + " |")
    L += ["", "Reproduced per reading: " + ", ".join(
        f"`{n}` {sum(c['readings'][n]['verdict'] == 'yes' for c in claim_rows)}/{len(claim_rows)}" for n in names), ""]
    L += ["## Does learning matter? Share of the random-to-oracle gap each scheme closes (Fig. 5)", "",
          "(x − random) / (oracle − random) of the mean utility; the gap itself in token/slot and as a share "
          "of the oracle's utility. A reading where the greedy heuristic already closes most of the gap leaves "
          "little for a learner to show.", "",
          "| reading | U | oracle | gap (token/slot) | gap / oracle | greedy | GA | Q-learning | DQN | DDQN |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for n in names:
        for u, c in summaries[n]["gap_closed"].items():
            L.append(f"| `{n}` | {u} | {c['oracle']:.3f} | {_fmt(c['gap'], c['gap_ci95'])} | "
                     f"{c['gap_share_of_oracle']:.1%} | " + " | ".join(_fmt(c.get(a), nd=2) for a in
                                                                      ("greedy", "ga", "qlearning", "dqn", "ddqn")) + " |")
    L += ["", "## Double DQN against classic DQN", "",
          "Paired difference of the frozen policies (token/slot) at each U of Fig. 5, the gap both leave to the "
          "oracle, and how many seeds a paired test would need to resolve a difference as large as that "
          "remaining gap (n ≈ (2·sd/gap)², sd of the paired differences): where DDQN and DQN both close almost "
          "all of the gap, no ordering between them can show.", "",
          "| reading | U | DDQN − DQN | DQN's remaining gap to the oracle | seeds to resolve it |", "|---|---|---|---|---|"]
    for n in names:
        for u, c in summaries[n]["gap_closed"].items():
            d = summaries[n].get("ddqn_vs_dqn", {}).get(u)
            if d:
                L.append(f"| `{n}` | {u} | {_sfmt(d['diff'], d['ci95'])} | {_fmt(d['remaining_gap'])} | "
                         f"{d['seeds_needed'] if d['seeds_needed'] is not None else 'n/a'} |")
    L += ["", "## The drop rule: what the oracle serves and what it lets wait (U = 20)", "",
          "| reading | oracle: Gcycles of served tasks | Gcycles of tasks left waiting | drops per slot | "
          "greedy: drops per slot |", "|---|---|---|---|---|"]
    for n in names:
        t = summaries[n]["table2"]
        o, g = t.get("oracle", {}).get("20"), t.get("greedy", {}).get("20")
        if o:
            L.append(f"| `{n}` | {_fmt(o['served_gcycles'], nd=2)} | {_fmt(o['waiting_gcycles'], nd=2)} | "
                     f"{_fmt(o['drops_per_slot'], nd=2)} | {_fmt(g['drops_per_slot'], nd=2) if g else 'n/a'} |")
    L.append("")
    for fig in ("fig4",) + tuple(FIGURES):
        L += [f"![{fig}]({fig}.png)", ""]
    for n in names:
        s = summaries[n]
        L += [f"## Reading `{n}`: {reading_title(n, s)}", ""]
        if s["fig4"]:
            L += ["| learner | convergence slot | never converged | final utility | training (s) | paper |",
                  "|---|---|---|---|---|---|"]
            paper_conv = {"ddqn": "≈ 250", "dqn": "≈ 400", "qlearning": "slowest"}
            for a, d in s["fig4"].items():
                L.append(f"| {LABELS[a]} | {_fmt(*d['convergence_slot'], nd=0)} | {d['never_converged']} | "
                         f"{_fmt(*d['final_utility'])} | {_fmt(d['train_seconds'], nd=1)} | {paper_conv[a]} |")
            L.append("")
        for fig in FIGURES:
            agg = s[fig]
            if not agg:
                continue
            xs = sorted({x for d in agg.values() for x in d["x"]})
            L += [f"{fig.replace('fig', 'Fig. ').replace('_fee', ' (fee reading)')}, utility (token/slot) vs "
                  f"{FIGURES[fig]}:", "", "| series | " + " | ".join(f"{x:g}" for x in xs) + " |",
                  "|---|" + "---|" * len(xs)]
            for series, d in agg.items():
                cells = [_fmt(d["mean"][d["x"].index(x)], d["ci95"][d["x"].index(x)]) if x in d["x"] else ""
                         for x in xs]
                L.append(f"| {LABELS.get(series, series)} | " + " | ".join(cells) + " |")
            L.append("")
        if s["table2"]:
            L += ["Table II (ECL: Σ_m T per slot, s; training: wall s; decision: ms per slot; the paper's ECL/ART "
                  "beside, comparable only in ordering):", "",
                  "| algorithm | N | ECL (s/slot) | training (s) | decision (ms) | paper ECL | paper ART (s) |",
                  "|---|---|---|---|---|---|---|"]
            for algo, d in s["table2"].items():
                for n_, v in d.items():
                    if int(n_) in (10, 20, 30):
                        p = PAPER_TABLE2.get(algo, {}).get(int(n_), ("–", "–"))
                        L.append(f"| {LABELS[algo]} | {n_} | {_fmt(v['ecl_s'])} | {_fmt(v['train_seconds'], nd=1)} | "
                                 f"{_fmt(v['decision_ms'], nd=2)} | {p[0]} | {p[1]} |")
            L.append("")
    return "\n".join(L)


def write_report(rows: list[dict], out: Path, scn, meta: dict) -> dict:
    """Every output file of `paper`; returns the summary (also written as summary.json)."""
    pc = scn.paper
    out.mkdir(parents=True, exist_ok=True)
    readings = [r for r in pc.readings if any(x["reading"] == r for x in rows)]
    summaries = {r: reading_summary(rows, r, pc, pc.reading_model(scn.model, r)) for r in readings}
    claim_rows = claims(rows, summaries, pc)
    meta = {**meta, "cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform(),
            "load_average_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "learner": scn.learner.to_dict(), "paper": pc.to_dict()}
    write_csvs(rows, summaries, out)
    plot(summaries, out, pc)
    (out / "summary.md").write_text(markdown(summaries, claim_rows, meta, pc))
    summary = {"meta": meta, "readings": summaries, "claims": claim_rows}
    with open(out / "summary.json", "w") as f:
        json.dump(summary, f, indent=1, default=lambda o: None)
    return summary
