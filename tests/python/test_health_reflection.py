"""grpc.health.v1.Health and server reflection (v1alpha through grpcio-reflection's client, v1
with the same messages), against a node and a gateway (see conftest.py)."""

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from test_distributed_cache import DEADLINE_S, status_of

SERVICES = {
    "distributed_cache.DistributedCache": {"Get", "Put", "Remove"},
    "distributed_cache.KvMesh": {
        "Get", "Put", "Remove", "MultiGet", "MultiPut", "MultiRemove", "Touch", "Ttl", "Topology",
    },
    "grpc.health.v1.Health": {"Check", "Watch"},
    "grpc.reflection.v1.ServerReflection": {"ServerReflectionInfo"},
    "grpc.reflection.v1alpha.ServerReflection": {"ServerReflectionInfo"},
}


@pytest.fixture
def health(stubs, channel):
    return stubs.health_grpc.HealthStub(channel)


def test_health_check_serving(stubs, health):
    serving = stubs.health.HealthCheckResponse.SERVING
    for service in ("", "distributed_cache.KvMesh", "distributed_cache.DistributedCache"):
        reply = health.Check(stubs.health.HealthCheckRequest(service=service), timeout=DEADLINE_S)
        assert reply.status == serving, service


def test_health_check_unknown_service_is_not_found(stubs, health):
    code, _ = status_of(health.Check, stubs.health.HealthCheckRequest(service="no.Such"))
    assert code == grpc.StatusCode.NOT_FOUND


def test_health_watch_starts_with_the_current_status(stubs, health):
    stream = health.Watch(stubs.health.HealthCheckRequest(service=""), timeout=DEADLINE_S)
    assert next(stream).status == stubs.health.HealthCheckResponse.SERVING
    stream.cancel()
    unknown = health.Watch(stubs.health.HealthCheckRequest(service="no.Such"), timeout=DEADLINE_S)
    assert next(unknown).status == stubs.health.HealthCheckResponse.SERVICE_UNKNOWN


def test_reflection_lists_and_describes_every_service(channel):
    """What `grpcurl list` and `grpcurl describe` do, with grpcio-reflection's client (v1alpha)."""
    db = ProtoReflectionDescriptorDatabase(channel)
    assert set(db.get_services()) == set(SERVICES)
    pool = descriptor_pool.DescriptorPool(db)
    for name, methods in SERVICES.items():
        service = pool.FindServiceByName(name)
        assert {m.name for m in service.methods} == methods, name
    multi_get = pool.FindMethodByName("distributed_cache.KvMesh.MultiGet")
    assert multi_get.input_type.full_name == "distributed_cache.KvMultiGetRequest"
    result = pool.FindMessageTypeByName("distributed_cache.KvGetResult")
    assert result.fields_by_name["value"].type == result.fields_by_name["value"].TYPE_BYTES
    old = pool.FindMessageTypeByName("distributed_cache.PutRequest")
    assert [f.name for f in old.fields] == ["key", "value", "ttl", "is_replica", "success"]


def _reflect_v1(channel, requests):
    call = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    return list(call(iter(requests), timeout=DEADLINE_S))


def test_reflection_v1(channel):
    """v1 (what grpcurl tries first): the same messages as v1alpha under another package."""
    replies = _reflect_v1(
        channel,
        [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="distributed_cache.KvMesh"),
            reflection_pb2.ServerReflectionRequest(file_by_filename="kvmesh/wire.proto"),
        ],
    )
    assert len(replies) == 3
    assert {s.name for s in replies[0].list_services_response.service} == set(SERVICES)
    files = replies[1].file_descriptor_response.file_descriptor_proto
    assert len(files) == 1 and b"kvmesh_api.proto" in files[0]
    # The internal wire protocol is not described.
    assert replies[2].error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
