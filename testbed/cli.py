"""The testbed's command line.

    testbed doctor [--json]                       what this machine can emulate
    testbed demo [--scenario smoke] [--set network.link_bw_mbit=20]
    testbed cleanup                               remove what a crashed run left behind
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

from testbed.config import ConfigError, load_scenario


def _terminate_as_interrupt(signum, frame):
    # SIGTERM takes the same path as Ctrl-C, so every owner's teardown runs.
    raise KeyboardInterrupt


def cmd_doctor(args) -> int:
    from testbed.platform import detect
    rep = detect()
    print(rep.to_json() if args.json else rep.to_text())
    return 0


def cmd_demo(args) -> int:
    if os.geteuid() != 0:
        print("testbed demo needs root (Mininet and Open vSwitch): run it with sudo", file=sys.stderr)
        return 2
    from testbed import smoke
    scn = load_scenario(args.scenario, args.set or [])
    run_dir = scn.results_path / scn.name / time.strftime("%Y%m%d-%H%M%S")
    print(f"[demo] scenario {scn.name}: bringing up topology '{scn.topology}' ...", flush=True)
    result = smoke.run(scn, run_dir)
    for k in ("datapath", "startup_s", "pingall_loss_pct", "rtt_h1_h2", "rtt_h1_ue1",
              "tcp_h1_h2_mbit", "tcp_h1_ue1_mbit", "controller_flows", "total_s"):
        print(f"  {k:<18} {result[k]}")
    for n in result["notes"]:
        print(f"  note: {n}")
    print(f"[demo] results: {run_dir}/smoke.json and smoke.png")
    return 0


def cmd_cleanup(args) -> int:
    from testbed.network import full_cleanup
    full_cleanup()
    print("cleanup done")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="testbed", description="Blockchain-empowered MEC testbed")
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("doctor", help="report what this machine can emulate")
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.set_defaults(fn=cmd_doctor)
    m = sub.add_parser("demo", help="run a scenario on the emulated network")
    m.add_argument("--scenario", default="smoke", help="scenario name in scenarios/ or a TOML path")
    m.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE", help="override a field")
    m.set_defaults(fn=cmd_demo)
    c = sub.add_parser("cleanup", help="remove bridges, namespaces and containers left by a crash")
    c.set_defaults(fn=cmd_cleanup)
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    try:
        return args.fn(args)
    except ConfigError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: everything started was torn down", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
