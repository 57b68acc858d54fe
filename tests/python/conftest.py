"""Fixtures for the gRPC suite: stubs generated from proto/ at test time, and the addresses of a
running kvmesh node and of a gateway in front of it.

`cargo test --workspace` runs this suite through tests/grpc_python.rs, which starts a node and a
`kvmesh gateway` forwarding to it, on free ports, and sets KVMESH_GRPC_ADDR (the node's gRPC
port), KVMESH_GATEWAY_ADDR (the gateway's) and KVMESH_WIRE_ADDR (the node's wire protocol).
Every test that talks gRPC runs once per target: `[node]` and `[gateway]`; without
KVMESH_GATEWAY_ADDR the gateway runs are skipped. To run it by hand:

    KVMESH_GRPC_ADDR=127.0.0.1:50051 KVMESH_WIRE_ADDR=127.0.0.1:7000 \
    KVMESH_GATEWAY_ADDR=127.0.0.1:50052 target/pyenv/bin/python -m pytest tests/python
"""

import importlib
import os
import pathlib
import socket
import struct
import sys

import grpc
import pytest
from grpc_tools import protoc

PROTO_DIR = pathlib.Path(__file__).resolve().parents[2] / "proto"


def _address(var):
    addr = os.environ.get(var)
    if not addr:
        pytest.fail(f"{var} is not set: run this suite through `cargo test`, or see conftest.py")
    return addr


@pytest.fixture(scope="session")
def stubs(tmp_path_factory):
    """The modules grpcio-tools generates from distributed_cache.proto and kvmesh/wire.proto,
    exactly as an old client's build would generate them."""
    out = tmp_path_factory.mktemp("stubs")
    # health.proto is compiled from its own directory: a generated `grpc/` package would hide
    # grpcio's.
    health_dir = PROTO_DIR / "grpc/health/v1"
    for include, proto, grpc_out in (
        (PROTO_DIR, "distributed_cache.proto", True),
        (PROTO_DIR, "kvmesh_api.proto", True),
        (PROTO_DIR, "kvmesh/wire.proto", False),
        (health_dir, "health.proto", True),
    ):
        args = ["protoc", f"-I{include}", f"--python_out={out}"]
        if grpc_out:
            args.append(f"--grpc_python_out={out}")
        assert protoc.main(args + [str(include / proto)]) == 0, f"protoc failed on {proto}"
    sys.path.insert(0, str(out))

    class Stubs:
        pb = importlib.import_module("distributed_cache_pb2")
        pb_grpc = importlib.import_module("distributed_cache_pb2_grpc")
        kv = importlib.import_module("kvmesh_api_pb2")
        kv_grpc = importlib.import_module("kvmesh_api_pb2_grpc")
        wire = importlib.import_module("kvmesh.wire_pb2")
        health = importlib.import_module("health_pb2")
        health_grpc = importlib.import_module("health_pb2_grpc")

    return Stubs


@pytest.fixture(scope="session", params=["node", "gateway"])
def grpc_addr(request):
    """The gRPC address under test: the node's own port, then the gateway's."""
    if request.param == "gateway":
        if not os.environ.get("KVMESH_GATEWAY_ADDR"):
            pytest.skip("KVMESH_GATEWAY_ADDR is not set")
        return _address("KVMESH_GATEWAY_ADDR")
    return _address("KVMESH_GRPC_ADDR")


@pytest.fixture(scope="session")
def wire_addr():
    return _address("KVMESH_WIRE_ADDR")


@pytest.fixture
def channel(grpc_addr):
    with grpc.insecure_channel(grpc_addr) as ch:
        yield ch


@pytest.fixture
def cache(stubs, channel):
    """An old client's stub, with grpcio's default options."""
    return stubs.pb_grpc.DistributedCacheStub(channel)


@pytest.fixture
def kv(stubs, channel):
    """A stub of the bytes API, distributed_cache.KvMesh."""
    return stubs.kv_grpc.KvMeshStub(channel)


class WireClient:
    """Just enough of kvmesh's wire protocol (4-byte big-endian length + one protobuf message)
    to store values the string API cannot carry."""

    def __init__(self, addr, wire):
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.wire = wire
        self.next_id = 1

    def call(self, op):
        request = self.wire.Request(id=self.next_id, ops=[op])
        self.next_id += 1
        body = request.SerializeToString()
        self.sock.sendall(struct.pack(">I", len(body)) + body)
        (length,) = struct.unpack(">I", self._read(4))
        response = self.wire.Response.FromString(self._read(length))
        assert response.id == request.id and response.error == 0, response
        return response.results[0]

    def _read(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            assert chunk, "the node closed the wire connection"
            buf += chunk
        return buf

    def close(self):
        self.sock.close()


@pytest.fixture
def wire_client(stubs, wire_addr):
    client = WireClient(wire_addr, stubs.wire)
    yield client
    client.close()
