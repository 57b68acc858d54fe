"""A gateway in front of a cluster that a node joins: its callers see no error, and its Topology
answer's ring_version is the cluster's topology epoch.

tests/node_membership.rs runs this file twice against a gateway in front of a 3-node cluster:
KVMESH_JOIN_PHASE=before (writes the keys), then, once a 4th node joined, KVMESH_JOIN_PHASE=after
(reads and rewrites them through the gateway, whose clients still route by the old topology).
KVMESH_JOIN_GATEWAY is the gateway's gRPC address, KVMESH_JOIN_EPOCH and KVMESH_JOIN_NODES the
topology epoch and member count expected. Without them, it is skipped.
"""

import os

import grpc
import pytest

GATEWAY = os.environ.get("KVMESH_JOIN_GATEWAY", "")
PHASE = os.environ.get("KVMESH_JOIN_PHASE", "")

pytestmark = pytest.mark.skipif(
    not GATEWAY or not PHASE, reason="needs a gateway and a join: tests/node_membership.rs sets it"
)

KEYS = [f"join-key-{i}" for i in range(200)]


def test_keys_and_topology_through_the_gateway(stubs):
    with grpc.insecure_channel(GATEWAY) as channel:
        cache = stubs.pb_grpc.DistributedCacheStub(channel)
        kv = stubs.kv_grpc.KvMeshStub(channel)
        if PHASE == "before":
            for i, key in enumerate(KEYS):
                assert cache.Put(stubs.pb.PutRequest(key=key, value=f"v{i}"), timeout=10).success
        else:
            for i, key in enumerate(KEYS):
                assert cache.Get(stubs.pb.GetRequest(key=key), timeout=10).value == f"v{i}"
            for i, key in enumerate(KEYS):
                assert cache.Put(stubs.pb.PutRequest(key=key, value=f"w{i}"), timeout=10).success
                assert cache.Get(stubs.pb.GetRequest(key=key), timeout=10).value == f"w{i}"
        t = kv.Topology(stubs.kv.KvTopologyRequest(), timeout=10)
        assert t.ring_version == int(os.environ["KVMESH_JOIN_EPOCH"]), t
        assert len(t.nodes) == int(os.environ["KVMESH_JOIN_NODES"]), t
