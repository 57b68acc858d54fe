"""Fixtures for the DistributedCache suite: stubs generated from proto/ at test time, and the
addresses of a running kvmesh node.

`cargo test --workspace` runs this suite through tests/grpc_python.rs, which starts a node on
free ports and sets KVMESH_GRPC_ADDR (gRPC) and KVMESH_WIRE_ADDR (kvmesh's wire protocol).
To run it by hand against a node of your own:

    KVMESH_GRPC_ADDR=127.0.0.1:50051 KVMESH_WIRE_ADDR=127.0.0.1:7000 \
        target/pyenv/bin/python -m pytest tests/python
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
    for proto, grpc_out in (("distributed_cache.proto", True), ("kvmesh/wire.proto", False)):
        args = ["protoc", f"-I{PROTO_DIR}", f"--python_out={out}"]
        if grpc_out:
            args.append(f"--grpc_python_out={out}")
        assert protoc.main(args + [str(PROTO_DIR / proto)]) == 0, f"protoc failed on {proto}"
    sys.path.insert(0, str(out))

    class Stubs:
        pb = importlib.import_module("distributed_cache_pb2")
        pb_grpc = importlib.import_module("distributed_cache_pb2_grpc")
        wire = importlib.import_module("kvmesh.wire_pb2")

    return Stubs


@pytest.fixture(scope="session")
def grpc_addr():
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
