"""Compile the Solidity sources with the pinned solc (solcjs) into build artifacts.

``python -m testbed build-contracts`` writes ``contracts/build/<Contract>.json`` (ABI, creation and
runtime bytecode, compiler settings and a hash of everything that went in). Artifacts are
generated, never edited by hand; :func:`load_artifact` refuses one whose input hash no longer
matches the sources, so a stale artifact cannot be deployed by mistake.

EVM version: ``london``. The testbed's chain is geth 1.11.6 mining proof-of-work (ethash), and
ethash refuses Shanghai headers ("ethash does not support shanghai fork"), so that chain's
EVM stops at London: no PUSH0 (EIP-3855, Shanghai), which solc emits from ``shanghai`` on.
``paris`` would produce the same opcodes; ``london`` names the rules the chain really runs.
Tests run anvil with ``--hardfork london`` so the same rules and gas schedule apply there.
"""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONTRACTS_DIR = ROOT / "contracts"
BUILD_DIR = CONTRACTS_DIR / "build"
SOLCJS = ROOT / "node_modules" / ".bin" / "solcjs"

SOLC_VERSION = "0.8.28"  # pinned in package.json; the build refuses any other compiler
EVM_VERSION = "london"
# The contract is deployed once and called for every offload, so runtime gas is what matters.
# Measured when this was chosen: the IR pipeline with 1e6 runs gave the cheapest calls; the
# legacy pipeline at 200 runs cost 130-500 gas more per call (but 0.15 M less to deploy).
OPTIMIZER_RUNS = 1_000_000
SETTINGS = {
    "optimizer": {"enabled": True, "runs": OPTIMIZER_RUNS},
    "viaIR": True,
    "evmVersion": EVM_VERSION,
    "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}},
}


class BuildError(RuntimeError):
    """The compiler failed or is not the pinned one."""


class StaleArtifactError(RuntimeError):
    """A build artifact is missing or was built from other sources or settings."""


def source_files() -> list[Path]:
    """All Solidity sources under contracts/ (the trading contract and the test attacker)."""
    return sorted(p for p in CONTRACTS_DIR.rglob("*.sol") if BUILD_DIR not in p.parents)


def standard_json_input(sources: list[Path] | None = None) -> dict:
    """solc's standard JSON input: sources inlined (keyed by repo-relative path) and SETTINGS."""
    sources = source_files() if sources is None else sources
    return {
        "language": "Solidity",
        "sources": {p.relative_to(ROOT).as_posix(): {"content": p.read_text()} for p in sources},
        "settings": SETTINGS,
    }


def input_hash(sources: list[Path] | None = None) -> str:
    """sha256 over the compiler version, the settings and every source's path and text."""
    blob = json.dumps({"solc": SOLC_VERSION, "input": standard_json_input(sources)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def compiler_version(solcjs: Path = SOLCJS) -> str:
    if not solcjs.exists():
        raise BuildError(f"solcjs not found at {solcjs}: run `make setup` (npm install of solc {SOLC_VERSION})")
    out = subprocess.run([str(solcjs), "--version"], capture_output=True, text=True, check=True).stdout
    return out.strip()


def compile_all(solcjs: Path = SOLCJS) -> dict[str, dict]:
    """Compile every source; return {contract name: artifact dict}. Raises BuildError on errors."""
    version = compiler_version(solcjs)
    if not version.startswith(SOLC_VERSION + "+"):
        raise BuildError(f"solcjs is {version}, the build is pinned to {SOLC_VERSION}")
    sources = source_files()
    # Its output goes to a file: solcjs (node) exits before a pipe has taken all of it, so a pipe
    # cut the document at 64 KiB once the contract grew past that
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.run(
            [str(solcjs), "--standard-json"],
            input=json.dumps(standard_json_input(sources)),
            stdout=out, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        )
        out.seek(0)
        stdout = out.read()
    if proc.returncode != 0:
        raise BuildError(f"solcjs exited with {proc.returncode}: {proc.stderr.strip()}")
    # solcjs may print a warning line before the JSON document
    output = json.loads(stdout[stdout.index("{"):])
    errors = [e for e in output.get("errors", []) if e["severity"] == "error"]
    if errors:
        raise BuildError("\n".join(e.get("formattedMessage", e["message"]) for e in errors))
    digest = input_hash(sources)
    artifacts = {}
    for source_path, contracts in output["contracts"].items():
        for name, out in contracts.items():
            artifacts[name] = {
                "contractName": name,
                "sourcePath": source_path,
                "abi": out["abi"],
                "bytecode": "0x" + out["evm"]["bytecode"]["object"],
                "deployedBytecode": "0x" + out["evm"]["deployedBytecode"]["object"],
                "compiler": version,
                "settings": {k: v for k, v in SETTINGS.items() if k != "outputSelection"},
                "inputHash": digest,
                "generatedBy": "python -m testbed build-contracts (do not edit)",
            }
    return artifacts


def write_artifacts(artifacts: dict[str, dict], out_dir: Path = BUILD_DIR) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, artifact in sorted(artifacts.items()):
        path = out_dir / f"{name}.json"
        path.write_text(json.dumps(artifact, indent=1, sort_keys=True) + "\n")
        paths.append(path)
    return paths


def load_artifact(name: str, build_dir: Path = BUILD_DIR) -> dict:
    """The artifact of contract `name`, after checking it was built from the current sources."""
    path = build_dir / f"{name}.json"
    if not path.exists():
        raise StaleArtifactError(f"no artifact {path}: run `python -m testbed build-contracts`")
    artifact = json.loads(path.read_text())
    if artifact.get("inputHash") != input_hash():
        raise StaleArtifactError(
            f"artifact {path} is stale (sources or compiler settings changed since it was built): "
            "run `python -m testbed build-contracts`"
        )
    return artifact


def stale_artifacts(out: Path = BUILD_DIR) -> list[str]:
    """Why each artifact in ``out`` is missing or stale (empty: all up to date)."""
    stale = []
    for src in source_files():
        for name in _contract_names(src):
            try:
                load_artifact(name, out)
            except StaleArtifactError as exc:
                stale.append(str(exc))
    return stale


def build(check: bool = False, solcjs: Path = SOLCJS, out: Path = BUILD_DIR) -> int:
    """``testbed build-contracts [--check]``: compile into ``out``, or only check it; exit code."""
    if check:
        stale = stale_artifacts(out)
        print("\n".join(stale) or "artifacts up to date")
        return 1 if stale else 0
    try:
        artifacts = compile_all(solcjs)
    except BuildError as exc:
        print(f"build failed:\n{exc}", file=sys.stderr)
        return 1
    for path in write_artifacts(artifacts, out):
        art = json.loads(path.read_text())
        print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: "
              f"{(len(art['deployedBytecode']) - 2) // 2} bytes runtime, {art['compiler']}, evm {EVM_VERSION}")
    return 0


def _contract_names(src: Path) -> list[str]:
    """Names declared with `contract X` in a source (for --check without compiling)."""
    return re.findall(r"^\s*contract\s+(\w+)", src.read_text(), flags=re.MULTILINE)

