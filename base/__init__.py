"""The ground floor: what every other package of the testbed uses and that uses none of them.

``base.errors`` is the one configuration error (``ConfigError``, ``require``), raised by every
section's dataclass and caught once by the command line; ``base.processes`` is the one owner
of the processes the lab starts (``ManagedProcess``: start through a launcher (locally, in a
Mininet host's namespace as a given uid, in a container), ready-check, stop, never leave one
behind); ``base.machine`` is what machine this is and whether a calibration still fits it
(one rule for this machine and every cluster server). Nothing in ``base`` imports another
package of the project.
"""
