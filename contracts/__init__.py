"""The trading contract: ``TradingContract.sol`` (escrowed payments and payment channels), its
build (``build.py``, solc pinned by the set-up), the web3.py binding (``binding.py``) with its
transaction sender (``txsender.py``: nonces, resends, confirmations), a web3-free reader of its
state for the host programs (``reads.py``, which also defines the contract's data types), the
vouchers (``vouchers.py``, EIP-712) and the ``[contract]`` section (``config.py``). Imports:
``chain/`` (keys, accounts) and ``base/`` only. See README.md and docs/channels.md.
"""
