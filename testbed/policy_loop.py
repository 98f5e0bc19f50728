"""The decision maker on the controller: the policy loop of the live lab (paper Fig. 3).

    python -m testbed.policy_loop --lab RUN/lab/lab.json --token-file TOKEN --out RUN --slots N

Every slot of ``model.slot_s`` seconds it reads the measured state from the controller,
lets the scenario's policy (``lab.policy``: round_robin, greedy, agent:NAME or file:PATH)
decide which UE each MEC server serves and each server's hash budget, and puts that in force
through :class:`testbed.live_env.LiveEnv` (``PUT /assignment``), which then measures the
slot's utility (11). A learning agent fine-tunes online when ``lab.learn_online`` is set (the
same ``learn`` call as in simulation). One JSON line per slot goes to ``<out>/slots.jsonl``:
the decision, its latency, when the switches and miners applied it, the measured terms.

It is its own process on purpose: if it crashes, the controller keeps the last assignment in
force and falls back to round-robin after 1.5 slots without a decision (the run records the
gap), and nothing on chain is affected. SIGTERM ends it after the current slot.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np


def slot_record(k: int, policy: str, decision_ms: float, agent_ms, reward: float, sinfo: dict, snap: dict,
                excluded=None) -> dict:
    """One line of slots.jsonl: the decision, its latency, when it was applied, the measured terms."""
    return {"slot": k, "t": sinfo["t0"], "policy": policy, "decision_ms": decision_ms, "agent_ms": agent_ms,
            "put_ms": sinfo["put_ms"], "lead_ms": sinfo.get("lead_ms"), "end_observe_ms": sinfo.get("end_observe_ms"),
            "end_measure_ms": sinfo.get("end_measure_ms"), "status": sinfo["status"], "error": sinfo["error"],
            "slot_to_applied_s": sinfo["slot_to_applied_s"], "applied": sinfo["applied"],
            "served": sum(u is not None for u in sinfo["serve"].values()),
            "waiting": sum(t.get("mec") is None for t in snap["pending"].values()),
            "serve": sinfo["serve"], "levels": sinfo["levels"], "reputation": snap["reputation"],
            "down": snap.get("down", []), "projected": sinfo["projected"], "excluded": excluded,
            "utility": reward, "server_utility": np.asarray(sinfo["server_utility"]).tolist(),
            "mining_reward": sinfo["mining_reward"], "revenue": sinfo["revenue"],
            "latency_s": sinfo["latency_s"], "n_served": sinfo["n_served"], "blocks": sinfo["blocks"],
            "outside_blocks": sinfo["outside_blocks"], "expected_mec_blocks": sinfo["expected_mec_blocks"],
            "hash_mhs": sinfo["hash_mhs"], "miner_cores": sinfo["miner_cores"],
            "geth_hashrate_hps": sinfo["geth_hashrate_hps"], "t1": sinfo["t1"]}


LIVE_VIEW_FIELDS = ("slot", "t", "policy", "utility", "server_utility", "mining_reward", "revenue", "latency_s",
                    "n_served", "blocks", "decision_ms", "slot_to_applied_s")


class LiveViewFeed(threading.Thread):
    """Sends each slot's record to the live view (``PUT /slot``) off the decision's path: slot
    k's record goes once slot k + 1's assignment was put (or at :meth:`close`), so the
    controller answers the next decision first. Measured before: sent at once, it sat between
    a slot's end and the next decision. A failed send is said on stderr, and the run goes on."""

    def __init__(self, env):
        super().__init__(name="live-view-feed", daemon=True)
        self.env, self.queue, self.closing = env, queue.Queue(), threading.Event()
        self.start()

    def send(self, k: int, record: dict) -> None:
        self.queue.put((k, record))

    def run(self) -> None:
        env = self.env
        while True:
            item = self.queue.get()
            if item is None:
                return
            k, record = item
            with env.puts:              # slot k + 1's assignment is the (k + 2)-th PUT (slot 0's is the first)
                env.puts.wait_for(lambda: env.puts_done >= k + 2 or self.closing.is_set(), timeout=60)
            try:
                status, answer = env.api.call("PUT", "/slot", record)
                if status != 200:
                    print(f"live view: slot {k} refused ({status}): {answer}", file=sys.stderr, flush=True)
            except OSError as e:
                print(f"live view: slot {k} not sent: {e}", file=sys.stderr, flush=True)

    def close(self) -> None:
        """Send what is queued now, then stop."""
        self.closing.set()
        with self.env.puts:
            self.env.puts.notify_all()
        self.queue.put(None)
        self.join(timeout=30)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m testbed.policy_loop", description=__doc__.splitlines()[0])
    ap.add_argument("--lab", required=True, type=Path, help="the running lab's lab.json")
    ap.add_argument("--token-file", required=True, type=Path, help="the policy's bearer token")
    ap.add_argument("--out", required=True, type=Path, help="folder for slots.jsonl")
    ap.add_argument("--slots", type=int, default=None, help="slots to run (default lab.slots)")
    args = ap.parse_args(argv)

    from testbed.live_env import LiveEnv
    from testbed.policy import AgentPolicy, make_policy

    env = LiveEnv(args.lab, args.token_file.read_text().strip())
    scn = env.scn
    try:
        # the decision maker shares the cores with ~40 lab processes: ahead of them in the queue
        # (lab.control_nice, as the controller's); before any thread of its own is started
        os.setpriority(os.PRIO_PROCESS, 0, scn.lab.control_nice)
    except OSError:
        pass
    policy = make_policy(scn)
    learn = scn.lab.learn_online and isinstance(policy, AgentPolicy) and policy.agent.trains
    slots = args.slots if args.slots is not None else scn.lab.slots
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    out = open(args.out / "slots.jsonl", "a", buffering=1)
    print(f"policy {policy.name} deciding {slots} slots of {scn.model.slot_s} s"
          f"{' (learning online)' if learn else ''}", flush=True)
    done = [0]

    feed = LiveViewFeed(env)

    def write(rec: dict) -> None:
        out.write(json.dumps(rec) + "\n")
        feed.send(rec["slot"], {k: rec[k] for k in LIVE_VIEW_FIELDS})
        done[0] += 1

    try:
        if isinstance(policy, AgentPolicy):
            # an agent of agent/: the same loop as its training in simulation (agent.train.run_slots);
            # torch (~500 MB resident) is loaded by the agents only, not by a rule of thumb
            from agent.train import run_slots
            seen = {}

            def on_slot(k: int, r: dict) -> None:
                sinfo = r["info"]
                rec = slot_record(k, policy.name, r["decision_ms"], r["decision_ms"], r["reward"], sinfo,
                                  seen.get("snap") or sinfo["snapshot"])
                rec["decision_cpu_ms"] = r["decision_cpu_ms"]
                write(rec)
                seen["snap"] = sinfo["snapshot"]
            run_slots(policy.agent, env, slots, seed=scn.seed, explore=False, learn=learn, on_slot=on_slot,
                      stop=lambda: stop["now"])
            if learn:
                policy.agent.save(args.out / "agent-finetuned.pt")
        else:
            # a rule of thumb on the measured state (round_robin, greedy)
            _, info = env.reset(seed=scn.seed)
            snap = info["snapshot"]
            for k in range(slots):
                if stop["now"]:
                    break
                t0 = time.perf_counter()
                serve, levels, pinfo = policy.decide(snap)
                decision_ms = (time.perf_counter() - t0) * 1e3
                _, reward, _, _, sinfo = env.step((serve, levels))
                write(slot_record(k, policy.name, decision_ms, None, reward, sinfo, snap, pinfo.get("excluded")))
                snap = sinfo["snapshot"]
    finally:
        feed.close()           # the last slot's record: after its own PUT, there is no next
    print(f"policy {policy.name} done after {done[0]} slot(s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
