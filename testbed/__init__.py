"""The lab: the one command line (``python -m testbed VERB``), the live lab's owner, the
experiments, the live environment and the policies with their loop.

``cli.py`` reads the Scenario and calls a verb; ``lab.py`` brings the live lab up and down (the
network from ``topologies/``, the chain from ``chain/``, the contract from ``contracts/``, the
programs of ``nodes/`` and the controller); ``live_env.py`` is the lab as a Gymnasium env;
``policy.py`` and ``policy_loop.py`` the policies and the process that runs one every slot;
``experiments/`` every measurement (run, demo, compare, fidelity, paper, benches). The top layer:
nothing below imports it.
"""
