"""The miners' library: the chain the MEC servers mine, as processes and settings.

``geth.py`` one go-ethereum node (datadir, config, start, hash budget by CPU quota),
``network.py`` a network of them (``Chain``: miners, the RPC gateway, the outside miner,
peering, budgets), ``anvil.py`` the scratch chain of the set-up and the contract tests,
``cgroup.py`` the one CPU-quota writer (cgroup v1 and v2), ``rpc.py`` the one JSON-RPC client
without web3.py (the contract's light readers, the controller's miner polls), ``accounts.py``
the accounts every part derives from the run's mnemonic, ``config.py`` the scenario's
``[chain]`` section. It imports only ``base``; the lab (``testbed``) and the controller use it.
"""
