"""The trading contract (Solidity), its build, its web3.py binding and gas report (see README.md)."""
