"""Run the testbed's os-ken apps (os-ken 4.x has no ``osken-manager`` command).

    python -m controller --listen 127.0.0.1 --port 6653 [--app controller.l2_switch ...]
"""
import argparse
import sys

DEFAULT_APPS = ["controller.l2_switch"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m controller", description=__doc__.splitlines()[0])
    ap.add_argument("--listen", default="127.0.0.1", help="OpenFlow listen address")
    ap.add_argument("--port", type=int, default=6653, help="OpenFlow TCP port")
    ap.add_argument("--app", action="append", help="os-ken app module (repeatable)")
    args = ap.parse_args(argv)
    # Imported here: os-ken monkey-patches the process with eventlet on import.
    from os_ken import cfg
    from os_ken.base.app_manager import AppManager
    cfg.CONF(args=["--ofp-listen-host", args.listen, "--ofp-tcp-listen-port", str(args.port)],
             project="os_ken")
    AppManager.run_apps(args.app or DEFAULT_APPS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
