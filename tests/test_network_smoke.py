"""The emulated network for real: OVS switch, os-ken controller, plain and Docker hosts."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from topologies.config import NetworkConfig
from topologies.network import EmulatedNetwork
from testbed.smoke import iperf_mbit, ping_rtt_ms
from topologies.smoke import SmokeTopo

pytestmark = [pytest.mark.network, pytest.mark.docker]
PORT = 16653   # not the default, so a lab controller already running is not disturbed


def _net(tmp_path, bw):
    return EmulatedNetwork(SmokeTopo(bw_mbit=bw), NetworkConfig(controller_port=PORT, link_bw_mbit=bw),
                           tmp_path)


def test_ping_tcp_and_controller_flows(network_ready, no_leftovers, tmp_path):
    with _net(tmp_path, 50) as net:
        assert net.pingAll(timeout=2) == 0.0
        h1, h2, ue1 = net.get("h1", "h2", "ue1")
        # ue1 really is the container: its root file system is the image's.
        # (/etc/hostname is the one Docker wrote for the container; the host's is different.)
        assert ue1.cmd("cat /etc/hostname").strip() == "ue1"
        assert "bookworm" in ue1.cmd("cat /etc/os-release")
        assert ping_rtt_ms(h1, ue1, 3)["loss_pct"] == 0.0
        assert iperf_mbit(h1, h2, 1.5) > 5
        assert iperf_mbit(ue1, h1, 1.5) > 5          # TCP out of the container too
        flows = net.get("s1").dpctl("dump-flows", "-O", "OpenFlow13")
        assert "priority=10," in flows, f"the os-ken app installed no unicast flows:\n{flows}"


def test_tclink_shapes_bandwidth(network_ready, no_leftovers, tmp_path):
    # 10 Mbit/s shaped vs unshaped on the same path: shaping must hold the rate near 10.
    with _net(tmp_path, 10) as net:
        shaped = iperf_mbit(*net.get("h1", "h2"), 2)
    with _net(tmp_path, None) as net:
        free = iperf_mbit(*net.get("h1", "h2"), 2)
    assert 5 < shaped < 11, f"shaped to 10 Mbit/s but measured {shaped:.1f}"
    assert free > 3 * shaped, f"unshaped {free:.1f} Mbit/s is not clearly above shaped {shaped:.1f}"


def test_teardown_after_error_leaves_nothing(network_ready, no_leftovers, tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with _net(tmp_path, 50):
            raise RuntimeError("boom")
    assert subprocess.run(["ovs-vsctl", "br-exists", "s1"]).returncode == 2   # 2 = no such bridge


def test_smoke_command_writes_results(network_ready, no_leftovers, tmp_path):
    out = subprocess.run([sys.executable, "-m", "testbed", "smoke", "--set", f"results_dir={tmp_path}",
                          "--set", f"network.controller_port={PORT}", "--set", "network.iperf_seconds=1"],
                         capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent.parent)
    assert out.returncode == 0, out.stderr[-2000:]
    # shaped links and a healthy run: Mininet prints no error (it used to echo htb's quantum warning)
    assert "*** Error" not in out.stdout + out.stderr, (out.stdout + out.stderr)[-2000:]
    result = json.loads(next(tmp_path.glob("smoke/*/smoke.json")).read_text())
    assert result["pingall_loss_pct"] == 0.0
    assert result["tcp_h1_ue1_mbit"] > 5
    assert next(tmp_path.glob("smoke/*/smoke.png")).stat().st_size > 1000
