"""The lab's one command line: ``python -m testbed VERB [--scenario NAME|PATH] [--set a.b=v]``.

Every verb gets all its settings from one :class:`scenario.config.Scenario` (the scenario file,
then the ``--set`` overrides); the Makefile targets call these verbs. ``python -m testbed VERB
--help`` describes each.

    doctor            what this machine can emulate; exit 1 if a required part is missing
    run               the live lab: paid offloading, mining, the policy every slot
    demo              the live lab with the DDQN (trained in simulation if needed) beside greedy
    compare           two policies on the live lab over repeated runs: a verdict with its interval
    fidelity          the simulator against a live run, before and after fitting its constants
    smoke             the toolchain on the emulated network (ping, TCP, controller flows)
    topology          one topology alone: bring up, ping every pair, time, tear down (JSON)
    paper             the paper's figures under every reading (Figs. 4-7, Table II)
    sweep             a sweep over seeds x readings x scenarios (a scenario's [sweep]), on Ray
    bench-agent       the agent's speed and quality, as JSON
    bench-lab         one live run measured for speed and footprint (bench.json, issue 21's targets)
    gas               gas of every contract call beside the paper's Table III
    mining-check      do miners win blocks in proportion to their hash budget?
    bench-chain WHICH chain start-up, hash-budget change, full DAG
    cluster-check     one network across the [cluster] servers: controller, tunnels, ping, budgets, teardown
    bench-server-agent  hash budgets through a cluster server's agent: p50/p95/p99 (JSON)
    calibrate         measure this machine: hash rate per core, the work kernel's cycles
    build-contracts   compile the contracts (--check: stale artifacts are an error)
    build-images      build the Docker images offline from Debian packages
    cleanup           remove what a crashed run left behind
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable

from scenario.config import ConfigError, Scenario, load_scenario


def _terminate_as_interrupt(signum, frame):
    # SIGTERM takes the same path as Ctrl-C, so every owner's teardown runs.
    raise KeyboardInterrupt


def _need_root(verb: str) -> None:
    if os.geteuid() != 0:
        raise SystemExit(f"testbed {verb} needs root (Mininet, Open vSwitch, cgroups): "
                         "run it with sudo")


def _out(scn: Scenario, args, *parts: str) -> Path:
    """``--out`` if given, else the scenario's results folder (joined with ``parts``)."""
    return Path(args.out) if getattr(args, "out", None) else scn.results_path.joinpath(*parts)


# ---------------------------------------------------------------------------- verbs


def cmd_doctor(scn: Scenario, args) -> int:
    from topologies.platform import detect
    rep = detect()
    print(rep.to_json() if args.json else rep.to_text())
    missing = rep.missing()
    if missing:
        print(f"doctor: missing required part(s): {', '.join(missing)}. Run `make setup`.",
              file=sys.stderr)
        return 1
    return 0


def cmd_smoke(scn: Scenario, args) -> int:
    _need_root("smoke")
    from testbed import smoke
    run_dir = scn.results_path / scn.name / time.strftime("%Y%m%d-%H%M%S")
    print(f"[smoke] scenario {scn.name}: bringing up topology '{scn.topology.kind}' ...", flush=True)
    result = smoke.run(scn, run_dir)
    for k in ("datapath", "startup_s", "pingall_loss_pct", "rtt_h1_h2", "rtt_h1_ue1",
              "tcp_h1_h2_mbit", "tcp_h1_ue1_mbit", "controller_flows", "total_s"):
        print(f"  {k:<18} {result[k]}")
    for n in result["notes"]:
        print(f"  note: {n}")
    print(f"[smoke] results: {run_dir}/smoke.json and smoke.png")
    return 0


def cmd_run(scn: Scenario, args) -> int:
    _need_root("run")
    from testbed.experiments import live
    summary = live.run(scn, Path(args.out) if args.out else None, cli=args.cli)
    t = summary["tasks"]
    print(f"[run] {t['completed']} of {t['offered']} tasks completed, {t['failed']} failed, "
          f"{t['refunded']} refunded; books close: {summary['lost']['books_close']}")
    print(f"[run] results: {summary.get('run_dir') or ''}")
    return 0 if summary["lost"]["books_close"] else 1


def cmd_demo(scn: Scenario, args) -> int:
    _need_root("demo")
    from testbed.experiments import demo
    rep = demo.run(scn, _out(scn, args, "demo", time.strftime("%Y%m%d-%H%M%S")))
    for name, p in rep["policies"].items():
        print(f"[demo] {name:<8} " + (f"failed: {p['error']}" if "error" in p else
                                      f"utility {p['utility_mean']:.2f} ± {p['utility_ci95']:.2f} per slot, "
                                      f"{p['tasks']['completed']}/{p['tasks']['offered']} tasks, books close "
                                      f"{p['books_close']}"))
    if rep["verdict"]:
        print(f"[demo] DDQN at least greedy: {rep['verdict']['ddqn_at_least_greedy']}")
    print(f"[demo] report: {rep['out_dir']}/demo.md")
    return 0 if all("error" not in p and p["books_close"] for p in rep["policies"].values()) else 1


def cmd_compare(scn: Scenario, args) -> int:
    import dataclasses
    from scenario.config import CompareConfig
    c = scn.compare
    # --policies/--runs are the [compare] fields, checked as such before anything starts
    scn = dataclasses.replace(scn, compare=CompareConfig(
        policies=args.policies.split(",") if args.policies else c.policies,
        runs=args.runs if args.runs is not None else c.runs, slots=c.slots))
    _need_root("compare")
    from testbed.experiments import compare
    rep = compare.run(scn, _out(scn, args, "compare", time.strftime("%Y%m%d-%H%M%S")))
    a, b = rep["policies"]
    for key, label, _ in compare.TERMS:
        d = rep["difference"][key]
        print(f"[compare] {label:<20} {a} − {b} = {d['difference']:+.3f} ± {d['ci95']:.3f} "
              f"({'beyond chance' if d['beyond_chance'] else 'within chance'}, {d['pairs']} pairs)")
    print(f"[compare] report: {rep['out_dir']}/compare.md")
    ok = not rep["failed_runs"] and all(p["books_close"] for p in rep["per_policy"].values())
    return 0 if ok else 1


def cmd_bench_lab(scn: Scenario, args) -> int:
    _need_root("bench-lab")
    import json
    from testbed.experiments import bench_lab
    out = _out(scn, args, "bench", f"lab-{scn.model.n_servers}x{scn.model.n_users}")
    bench = bench_lab.run(scn, out)
    print(json.dumps(bench, indent=1, default=float))
    print(f"[bench-lab] {out}/bench.json")
    return 0 if bench["books_close"] else 1


def cmd_fidelity(scn: Scenario, args) -> int:
    from testbed.experiments import fidelity
    if args.run is None:
        _need_root("fidelity (it makes a live run first; or give --run RUN_DIR)")
    res = fidelity.run(scn, _out(scn, args, "fidelity"), Path(args.run) if args.run else None, slots=args.slots)
    for name in ("before", "after"):
        L = res[name]
        print(f"[fidelity] {name:<6} mean latency measured/simulated {L['latency']['ratio_of_means']:.2f}, "
              f"utility simulated/measured {L['utility']['simulated_over_measured'] or float('nan'):.3f} "
              f"(H = {res['network_hash_mhs']:g}, not fitted)")
    mc = res["mining"]
    print(f"[fidelity] MEC blocks {mc['mec_blocks']} / expected {mc['expected_mec_blocks']:.1f}; per-miner share "
          f"max error {mc['max_share_error'] or float('nan'):.2f}")
    print(f"[fidelity] report: {res['out_dir']}/fidelity.md")
    return 0


def cmd_paper(scn: Scenario, args) -> int:
    from testbed.experiments.paper import run_paper
    run_paper(scn, _out(scn, args, "paper"), jobs=args.jobs, engine=args.engine,
              address=args.address)
    return 0


def cmd_sweep(scn: Scenario, args) -> int:
    from testbed.experiments.paper import run_sweep
    run_sweep(scn, _out(scn, args, "sweep"), engine=args.engine, address=args.address)
    return 0


def cmd_bench_agent(scn: Scenario, args) -> int:
    import json
    from testbed.experiments.bench_agent import bench
    print(json.dumps(bench(scn), indent=1))
    return 0


def cmd_gas(scn: Scenario, args) -> int:
    from testbed.experiments import gas
    gas.run(scn, _out(scn, args))
    return 0


def cmd_mining_check(scn: Scenario, args) -> int:
    _need_root("mining-check")
    from testbed.experiments import mining_check
    mining_check.run(scn, _out(scn, args))
    return 0


def cmd_cluster_check(scn: Scenario, args) -> int:
    _need_root("cluster-check")
    from testbed.experiments import cluster_check
    return cluster_check.run(scn, _out(scn, args, "cluster-check", time.strftime("%Y%m%d-%H%M%S-")
                                       + scn.cluster.link), budget_slots=args.budget_slots,
                             lab_network=not args.no_lab_network, live_lab=not args.no_live_lab)


def cmd_bench_server_agent(scn: Scenario, args) -> int:
    _need_root("bench-server-agent")
    import json
    from testbed.experiments import bench_server_agent
    out = _out(scn, args, "bench", "server-agent")
    rep = bench_server_agent.run(out, writes=args.writes, miners=args.miners, in_netns=not args.no_netns,
                                 delay_ms=args.delay_ms, busy=args.busy, host_cores=float(scn.lab.host_cores),
                                 period_us=scn.chain.cpu_period_us)
    print(json.dumps(rep, indent=1))
    print(f"[bench-server-agent] {out}/bench.json")
    return 0 if rep["target"]["met"] else 1


def cmd_bench_chain(scn: Scenario, args) -> int:
    from testbed.experiments import chain_bench
    if args.which != "dag":
        _need_root("bench-chain")
    chain_bench.run(scn, args.which, generate=args.generate, out_dir=_out(scn, args))
    return 0


def cmd_calibrate(scn: Scenario, args) -> int:
    _need_root("calibrate")
    from testbed.experiments import calibrate
    calibrate.run(scn, Path(args.out) if args.out else None)
    return 0


def cmd_topology(scn: Scenario, args) -> int:
    _need_root("topology")
    import json

    from topologies.run import run
    result = run(scn.topology, scn.network, scn.model.n_servers, scn.model.n_users, scn.seed,
                 cli=args.cli, probe=args.probe, plan=args.plan, cluster=scn.cluster)
    print(json.dumps(result, indent=1))
    return 0 if result["reachability"]["failed"] == 0 else 1


def cmd_build_contracts(scn: Scenario, args) -> int:
    from contracts.build import build
    return build(check=args.check)


def cmd_build_images(scn: Scenario, args) -> int:
    from topologies import images
    images.build_all()
    return 0


def cmd_cleanup(scn: Scenario, args) -> int:
    """Mininet's own sweep (all OVS bridges, namespaces, stale controllers), the testbed's
    containers and what runs that died left. For a lab machine after a hard crash."""
    _need_root("cleanup")
    from mininet.clean import cleanup as mininet_cleanup

    from testbed.lab import sweep_dead_runs
    from topologies.docker_host import remove_leftover_containers
    mininet_cleanup()
    remove_leftover_containers()
    for what in sweep_dead_runs():
        print(f"removed {what} (left by a run that died)")
    print("cleanup done")
    return 0


# ---------------------------------------------------------------------------- parser

#: verb -> (handler, default scenario, help, extra-arguments adder)
Verb = tuple[Callable, str | None, str, Callable[[argparse.ArgumentParser], None] | None]


def _engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", choices=["ray", "pool"], default="ray",
                   help="run jobs as Ray tasks (default: an embedded local Ray) or on a process pool")
    p.add_argument("--address", default=None,
                   help="an existing Ray cluster (ray start --head ...); default RAY_ADDRESS or local")


VERBS: dict[str, Verb] = {
    "doctor": (cmd_doctor, None, "what this machine can emulate; exit 1 if a required part is missing",
               lambda p: p.add_argument("--json", action="store_true", help="machine-readable output")),
    "smoke": (cmd_smoke, "smoke", "the toolchain on the emulated network: ping, TCP, controller flows", None),
    "demo": (cmd_demo, "lab", "the DDQN on the live lab beside greedy, same seed -> demo.md, demo.png", None),
    "compare": (cmd_compare, "lab", "two policies on the live lab over repeated runs (ABBA, same seeds per pair): "
                "a verdict per utility term over run means -> results/compare/",
                lambda p: (p.add_argument("--policies", default=None, help="A,B (default compare.policies)"),
                           p.add_argument("--runs", type=int, default=None, help="runs per policy (default compare.runs)"))),
    "fidelity": (cmd_fidelity, "lab", "the simulator against a live run, with the model's own constants, then "
                 "fitted (κ, work scale, link rate) -> results/fidelity/",
                 lambda p: (p.add_argument("--run", default=None, help="a live run's folder (default: make one)"),
                            p.add_argument("--slots", type=int, default=None,
                                           help="slots of the new live run (default lab.slots; >= 300 blocks "
                                                "resolve per-miner block shares)"))),
    "topology": (cmd_topology, "lab", "one topology alone (the scenario's [topology], M and U, seed): bring up, "
                 "ping every pair, time, tear down (JSON)",
                 lambda p: (p.add_argument("--cli", action="store_true", help="open the Mininet CLI once it is up"),
                            p.add_argument("--plan", action="store_true", help="also print the topology's plan"),
                            p.add_argument("--probe", choices=("all", "servers"), default="all",
                                           help="ping every pair (all) or every host to mec*, gw1, lab0 (servers)"))),
    "bench-lab": (cmd_bench_lab, "lab", "one live run measured for speed and footprint -> "
                  "results/bench/lab-<M>x<U>/bench.json (bring-up, memory, applied latency, targets)", None),
    "run": (cmd_run, "lab", "the live lab: UEs pay and offload, executors compute, miners mine, for lab.slots slots",
            lambda p: p.add_argument("--cli", action="store_true",
                                     help="open the Mininet CLI with everything running (the slots run meanwhile)")),
    "paper": (cmd_paper, "paper", "the paper's Figs. 4-7 and Table II under every reading -> results/paper/",
              lambda p: (p.add_argument("--jobs", type=int, default=None, help="parallel jobs (default paper.jobs)"),
                         _engine_args(p))),
    "sweep": (cmd_sweep, "sweeps/readings", "a sweep (seeds x readings x scenarios): the scenario's [sweep]",
              _engine_args),
    "bench-agent": (cmd_bench_agent, "paper", "agent speed and quality (JSON)", None),
    "gas": (cmd_gas, "gas", "gas of every contract call beside the paper's Table III -> gas.json, gas.md", None),
    "mining-check": (cmd_mining_check, "mining",
                     "miners' block share against their hash budget (1:2:4) -> mining.json, mining.png", None),
    "bench-chain": (cmd_bench_chain, None, "chain benchmarks: startup, budget or dag (JSON)",
                    lambda p: (p.add_argument("which", choices=["startup", "budget", "dag"]),
                               p.add_argument("--generate", action="store_true",
                                              help="dag: (re)generate the full DAGs"))),
    "cluster-check": (cmd_cluster_check, None, "one network across the [cluster] servers (make cluster-check "
                      "makes two as containers): pre-start check, controller, tunnels, ping, the lab's network, hash budgets "
                      "through each server's agent, teardown -> results/cluster-check/",
                      lambda p: (p.add_argument("--budget-slots", type=int, default=20,
                                                help="slots of the budgets stage (0: none)"),
                                 p.add_argument("--no-lab-network", action="store_true",
                                                help="skip the lab's topology across the servers"),
                                 p.add_argument("--no-live-lab", action="store_true",
                                                help="skip the live lab (testbed run) across the servers"))),
    "bench-server-agent": (cmd_bench_server_agent, None, "hash budgets through a cluster server's agent "
                           "(nodes/server_agent.py) in a namespace of its own, on real cgroups: request -> "
                           "applied p50/p95/p99 against issue 22's 300 ms (JSON)",
                           lambda p: (p.add_argument("--writes", type=int, default=500, help="budgets sent"),
                                      p.add_argument("--miners", type=int, default=2, help="miners on the server"),
                                      p.add_argument("--busy", type=int, default=0,
                                                     help="processes spinning beside the agent (a loaded server)"),
                                      p.add_argument("--delay-ms", type=float, default=0.0,
                                                     help="network delay each way (tc netem)"),
                                      p.add_argument("--no-netns", action="store_true",
                                                     help="the agent on loopback, no namespace"))),
    "calibrate": (cmd_calibrate, None, "measure hash rate per core and the work kernel -> results/calibration.json", None),
    "build-contracts": (cmd_build_contracts, None, "compile the Solidity contracts into contracts/build/",
                        lambda p: p.add_argument("--check", action="store_true",
                                                 help="only check that the artifacts are up to date")),
    "build-images": (cmd_build_images, None, "build the Docker images offline (idempotent)", None),
    "cleanup": (cmd_cleanup, None, "remove bridges, namespaces and containers left by a crash", None),
}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m testbed", description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 2)[2],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, (fn, default, help_, extra) in VERBS.items():
        p = sub.add_parser(verb, help=help_, description=help_)
        p.add_argument("--scenario", default=default,
                       help=f"scenario name in scenarios/ or a TOML path (default: {default or 'built-in defaults'})")
        p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                       help="override one field of the scenario (repeatable)")
        p.add_argument("--out", default=None, help="results folder (default: the scenario's)")
        if extra:
            extra(p)
        p.set_defaults(fn=fn)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    try:
        scn = load_scenario(args.scenario, args.set)
        return args.fn(scn, args)
    except ConfigError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: everything started was torn down", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
