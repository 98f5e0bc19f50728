"""``python -m agent paper|bench``: see :mod:`agent.experiments`."""
import sys

from agent.experiments import main

sys.exit(main())
