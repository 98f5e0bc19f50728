"""The lab's experiments: each one a function of the Scenario, called by `python -m testbed VERB`."""
