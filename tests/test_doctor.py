"""`testbed doctor` probes the machine and fails, naming the part and its fix, when a required
part is missing (the set-up's last word on whether the lab can run)."""
import json

import pytest

from testbed import cli
from topologies import platform

pytestmark = pytest.mark.machine          # probes Open vSwitch, Docker, namespaces


def test_doctor_passes_on_a_set_up_machine(capsys):
    assert cli.main(["doctor", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["missing"] == [] and rep["geth"] == platform.GETH_VERSION and rep["images"]


def test_doctor_fails_naming_a_missing_part(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(platform, "ANVIL", tmp_path / "no-anvil")
    assert cli.main(["doctor"]) == 1
    captured = capsys.readouterr()
    assert "MISSING: anvil 1.7.1: run `make setup`" in captured.out
    assert "missing required part(s): anvil" in captured.err
