"""The old DistributedCache API through every node of a cluster: any node answers any key, the
ones it does not own by forwarding them to their owner.

tests/node_cluster.rs runs this file against a 3-node cluster with KVMESH_CLUSTER_GRPC_ADDRS set
to the nodes' gRPC addresses and a gateway's in front of them (comma-separated), and
KVMESH_CLUSTER_WIRE_ADDRS to the nodes' wire addresses; without them, it is skipped.
"""

import os

import grpc
import pytest

ADDRS = [a for a in os.environ.get("KVMESH_CLUSTER_GRPC_ADDRS", "").split(",") if a]
WIRE = [a for a in os.environ.get("KVMESH_CLUSTER_WIRE_ADDRS", "").split(",") if a]

pytestmark = pytest.mark.skipif(
    not ADDRS or not WIRE, reason="needs a cluster: KVMESH_CLUSTER_GRPC_ADDRS (tests/node_cluster.rs sets it)"
)

KEYS = [f"cluster-key-{i}" for i in range(60)]


@pytest.fixture
def caches(stubs):
    channels = [grpc.insecure_channel(a) for a in ADDRS]
    yield [stubs.pb_grpc.DistributedCacheStub(ch) for ch in channels]
    for ch in channels:
        ch.close()


def test_every_key_through_every_node(stubs, caches):
    for i, key in enumerate(KEYS):
        writer = caches[i % len(caches)]
        assert writer.Put(stubs.pb.PutRequest(key=key, value=f"v{i}", ttl=0)).success
    for cache in caches:
        for i, key in enumerate(KEYS):
            assert cache.Get(stubs.pb.GetRequest(key=key), timeout=10).value == f"v{i}"


def test_remove_through_one_node_is_seen_by_all(stubs, caches):
    key = "cluster-removed"
    assert caches[0].Put(stubs.pb.PutRequest(key=key, value="x")).success
    assert caches[-1].Remove(stubs.pb.RemoveRequest(key=key)).success
    for cache in caches:
        with pytest.raises(grpc.RpcError) as err:
            cache.Get(stubs.pb.GetRequest(key=key), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_every_server_gives_the_whole_topology(stubs):
    """Nodes and the gateway list every member, with its wire port and shard ports."""
    expected = sorted((a.rsplit(":", 1)[0], int(a.rsplit(":", 1)[1])) for a in WIRE)
    for addr in ADDRS:
        with grpc.insecure_channel(addr) as channel:
            kv = stubs.kv_grpc.KvMeshStub(channel)
            t = kv.Topology(stubs.kv.KvTopologyRequest(), timeout=10)
        assert sorted((n.host, n.wire_port) for n in t.nodes) == expected, (addr, t)
        for n in t.nodes:
            assert list(n.shard_ports) == [n.wire_port + 1 + i for i in range(len(n.shard_ports))]
            assert len(n.shard_ports) >= 1, (addr, n)
