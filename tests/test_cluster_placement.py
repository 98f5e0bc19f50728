"""The [cluster] table and the placement over servers (issue 22): pure, no network."""
import json

import pytest

from scenario.config import ConfigError, load_scenario, scenario_from_dict
from topologies import TopologyConfig, build_topo
from topologies.config import ClusterConfig
from topologies.placement import LOCAL, bins, place
from topologies.platform import PlatformReport

TWO = ["cluster.controller_address='192.168.50.1'",
       "cluster.servers=[{name='a', address='192.168.50.11'}, {name='b', address='192.168.50.12', port=2222}]"]


def _plan(kind="cells", mec=4, ues=8, **cfg):
    class P:   # what build_topo reads of the platform
        ovs_datapath, netem = "user", False
    return build_topo(TopologyConfig(kind=kind, **cfg), mec, ues, 0, P()).plan


def test_no_cluster_by_default_and_the_digest_is_unchanged():
    scn = load_scenario("lab")
    assert not scn.cluster.enabled and scn.cluster.servers == ()
    two = load_scenario("lab", TWO)
    assert two.cluster.enabled and [s.name for s in two.cluster.servers] == ["a", "b"]
    assert two.cluster.servers[1].port == 2222 and two.cluster.servers[0].user == "root"
    assert two.cluster.hub_server == "a" and two.digest() != scn.digest()
    again = scenario_from_dict(json.loads(json.dumps(two.to_dict())))
    assert again.cluster == two.cluster and again.digest() == two.digest()


@pytest.mark.parametrize("override, field", [
    ("cluster.link='gre'", "cluster.link"),
    ("cluster.placement='random'", "cluster.placement"),
    ("cluster.controller_address='127.0.0.1'", "cluster.controller_address"),
    ("cluster.controller_address=''", "cluster.controller_address"),
    ("cluster.hub='c'", "cluster.hub"),
    ("cluster.pin={mec1='c'}", "cluster.pin"),
    ("cluster.vni_base=0", "cluster.vni_base"),
    ("cluster.underlay_mtu=576", "cluster.underlay_mtu"),
    ("cluster.max_clock_skew_s=0", "cluster.max_clock_skew_s"),
    ("cluster.agent_port=70000", "cluster.agent_port"),
    ("cluster.servers=[{name='a', address='x'}, {name='a', address='y'}]", "cluster.servers"),
    ("cluster.servers=[{name='a b', address='x'}]", r"cluster.servers\[0\].name"),
    ("cluster.servers=[{name='a', address='x', port=0}]", r"cluster.servers\[0\].port"),
    ("cluster.servers=[{name='a'}]", r"cluster.servers\[0\]"),
    ("cluster.servers=[{name='a', address='x', colour=1}]", r"cluster.servers\[0\]"),
])
def test_bad_cluster_values_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_scenario("lab", [*TWO, override] if "servers" not in override else
                      [TWO[0], override])


def test_bins_are_contiguous_and_even():
    assert bins(["s1", "s2", "s3", "s4", "s5"], ["a", "b"]) == {"s1": "a", "s2": "a", "s3": "a", "s4": "b", "s5": "b"}
    assert bins([], ["a"]) == {}


def test_without_a_cluster_everything_is_local_and_nothing_crosses():
    p = place(_plan(), ClusterConfig())
    assert set(p.server.values()) == {LOCAL} and p.crossing == []


@pytest.mark.parametrize("placement", ["bins", "round_robin"])
def test_cells_sites_stay_whole_and_only_backhaul_and_management_cross(placement):
    plan = _plan(mec=4, ues=12)
    cluster = load_scenario("lab", [*TWO, f"cluster.placement='{placement}'"]).cluster
    p = place(plan, cluster)
    for node in plan.nodes.values():               # every host with its data switch
        assert p.server[node.name] == p.server[node.switch]
    for i in range(1, 5):                          # mec i, acc i, its UEs: one server
        site = {p.server[f"acc{i}"], p.server[f"mec{i}"]} | {p.server[u.name] for u in plan.ues if u.site == i}
        assert len(site) == 1
    assert {p.server[n] for n in ("bh1", "gw1", "lab0", "mgmt1")} == {"a"}
    want = {"bins": ["a", "a", "b", "b"], "round_robin": ["a", "b", "a", "b"]}[placement]
    assert [p.server[f"acc{i}"] for i in range(1, 5)] == want
    on_b = [i for i in range(1, 5) if want[i - 1] == "b"]
    assert sorted((x.a, x.b) for x in p.crossing if x.kind == "backhaul") == sorted((f"acc{i}", "bh1") for i in on_b)
    assert sorted(x.b for x in p.crossing if x.kind == "management") == sorted(f"mec{i}" for i in on_b)
    assert {x.kind for x in p.crossing} == {"backhaul", "management"}
    assert p.to_dict()["crossing"][0]["servers"] == ["b", "a"]


def test_pins_come_first_and_a_split_site_is_refused():
    cluster = load_scenario("lab", [*TWO, "cluster.pin={mec1='b', mec4='a'}", "cluster.hub='b'"]).cluster
    p = place(_plan(mec=4), cluster)
    assert p.server["mec1"] == p.server["acc1"] == "b" and p.server["mec4"] == "a"
    assert p.server["bh1"] == "b" and p.hub == "b"
    assert [p.server[f"mec{i}"] for i in (2, 3)] == ["a", "b"]    # the free sites in bins
    with pytest.raises(ConfigError, match=r"cluster\.pin names mec9"):
        place(_plan(mec=4), load_scenario("lab", [*TWO, "cluster.pin={mec9='b'}"]).cluster)
    tree = _plan("tree", mec=4, ues=4, tree_edges=2)            # edge1 holds mec1 and mec3
    with pytest.raises(ConfigError, match=r"cluster\.pin puts the MEC servers of one site \(edge1\)"):
        place(tree, load_scenario("lab", [*TWO, "cluster.pin={mec1='a', mec3='b'}"]).cluster)


def test_star_has_no_site_to_move_and_tree_moves_edges():
    cluster = load_scenario("lab", TWO).cluster
    assert place(_plan("star", mec=2, ues=2), cluster).crossing == []
    p = place(_plan("tree", mec=4, ues=4, tree_edges=2), cluster)
    assert p.server["edge2"] == p.server["mec2"] == p.server["ue2"] == "b"
    assert p.server["cloud1"] == p.server["core1"] == "a"
    assert [str(x) for x in p.crossing if x.kind == "backhaul"] == ["edge2-core1 (backhaul, b-a)"]
