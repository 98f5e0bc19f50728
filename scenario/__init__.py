"""The one configuration object and what follows from it, shared by the lab and its programs.

``config.py``: :class:`Scenario`, loaded from a TOML file of ``scenarios/`` plus ``--set``
overrides; each section's dataclass belongs to the package that uses it (``agent.config``,
``chain.config``, ``contracts.config``, ``topologies.config``) and the lab's own sections are
here. ``units.py``: every conversion between the paper's model and the live lab (tokens and wei,
Gcycles and work-kernel iterations, MH/s and CPU cores) and the machine's calibration.
``runinfo.py``: ``lab.json``, the public facts of one run the lab hands to the programs on the
hosts (addresses, ports, the scenario). Imports: ``base/`` and the packages below (the section
configs; ``agent.model`` for the task's cycles), so the host programs (``nodes/``) and the
controller read the Scenario without the lab.
"""
