"""The lab's SDN controller program: os-ken apps in one process (os-ken 4.x has no
``osken-manager`` command). The lab starts it; it is not a user command.

    python -m controller --listen 127.0.0.1 --port 6653 [--app controller.l2_switch ...]
                         [--lab-config RUN/controller.json]
"""
import argparse
import logging
import os
import sys

from controller import settings

DEFAULT_APPS = ["controller.l2_switch"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m controller", description=__doc__.splitlines()[0])
    ap.add_argument("--listen", default="127.0.0.1", help="OpenFlow listen address")
    ap.add_argument("--port", type=int, default=6653, help="OpenFlow TCP port")
    ap.add_argument("--app", action="append", help="os-ken app module (repeatable)")
    ap.add_argument("--lab-config", default=None, help="the lab run's controller settings (JSON)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings.set_path(args.lab_config)
    if args.lab_config:
        try:
            # the live lab's controller answers the policy each slot and pushes flows: ahead of
            # the ~40 lab processes that share the cores (lab.control_nice; docs/performance.md)
            os.setpriority(os.PRIO_PROCESS, 0, settings.required("the controller").nice)
        except OSError:
            pass
    # Imported here: os-ken monkey-patches the process with eventlet on import.
    from os_ken import cfg
    from os_ken.base.app_manager import AppManager
    cfg.CONF(args=["--ofp-listen-host", args.listen, "--ofp-tcp-listen-port", str(args.port)],
             project="os_ken")
    AppManager.run_apps(args.app or DEFAULT_APPS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
