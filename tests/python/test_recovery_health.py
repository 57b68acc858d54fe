"""Health while a durable node recovers its log: NOT_SERVING (and every data call UNAVAILABLE)
until recovery is done, then SERVING. tests/grpc_python.rs restarts a durable node that holds
its recovery until a file exists (the node's KVMESH_TEST_HOLD_RECOVERY_UNTIL test hook) and runs
this file with:

- KVMESH_RECOVERING_GRPC_ADDR: that node's gRPC address;
- KVMESH_RECOVERY_RELEASE: the file that ends its recovery;
- KVMESH_RECOVERED_KEY / KVMESH_RECOVERED_VALUE: a key written before the restart.

Without them (the main suite's run) it is skipped."""

import os
import pathlib
import time

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from test_distributed_cache import DEADLINE_S, status_of

ADDR = os.environ.get("KVMESH_RECOVERING_GRPC_ADDR")
pytestmark = pytest.mark.skipif(not ADDR, reason="needs a recovering node (tests/grpc_python.rs)")


def test_not_serving_during_recovery_then_serving(stubs):
    with grpc.insecure_channel(ADDR) as channel:
        health = stubs.health_grpc.HealthStub(channel)
        kv = stubs.kv_grpc.KvMeshStub(channel)
        health_pb = stubs.health.HealthCheckResponse
        ask = stubs.health.HealthCheckRequest(service="")
        # The port is bound before the replay starts, so this answers as soon as the process is up.
        reply = health.Check(ask, timeout=DEADLINE_S, wait_for_ready=True)
        assert reply.status == health_pb.NOT_SERVING
        watch = health.Watch(ask, timeout=DEADLINE_S)
        assert next(watch).status == health_pb.NOT_SERVING

        key = os.environ["KVMESH_RECOVERED_KEY"].encode()
        code, details = status_of(kv.Get, stubs.kv.KvGetRequest(key=key))
        assert code == grpc.StatusCode.UNAVAILABLE and "recovering" in details, details
        # Reflection works meanwhile, so tools can look before the node is up.
        assert "distributed_cache.KvMesh" in ProtoReflectionDescriptorDatabase(channel).get_services()

        pathlib.Path(os.environ["KVMESH_RECOVERY_RELEASE"]).touch()
        assert next(watch).status == health_pb.SERVING
        watch.cancel()
        assert health.Check(ask, timeout=DEADLINE_S).status == health_pb.SERVING
        got = kv.Get(stubs.kv.KvGetRequest(key=key), timeout=DEADLINE_S)
        assert got.value == os.environ["KVMESH_RECOVERED_VALUE"].encode()
