"""The bytes API, distributed_cache.KvMesh (proto/kvmesh_api.proto), against a node and a gateway
(see conftest.py): bytes in and out unaltered, batches with one result per key, Touch, Ttl and
Topology."""

import os
import time
import uuid

import grpc
import pytest

from test_distributed_cache import DEADLINE_S, MAX_KEY, status_of

MAX_BATCH = 1000  # kvmesh_api.proto's documented batch limit
OK, NOT_FOUND, INVALID_ARGUMENT = 0, 5, 3
NOT_UTF8 = bytes(range(256))  # every byte value, including b"\xff", b"\x00", b"\xc0"


def key(prefix=b"k"):
    return prefix + b"-" + uuid.uuid4().hex.encode()


def test_non_utf8_keys_and_values_round_trip(stubs, kv):
    for k, v in ((key(b"\xff\xfe"), NOT_UTF8), (key(), b""), (key(b"\x00"), b"\x00" * 1000)):
        kv.Put(stubs.kv.KvPutRequest(key=k, value=v))
        assert kv.Get(stubs.kv.KvGetRequest(key=k)).value == v


def test_what_the_old_api_cannot_read_the_bytes_api_can(stubs, kv, cache, wire_client):
    k = key()
    stored = wire_client.call(stubs.wire.Op(code=stubs.wire.OP_PUT, key=k, value=b"ok\xff\xfe"))
    assert stored.status == stubs.wire.STATUS_OK, stored
    code, _ = status_of(cache.Get, stubs.pb.GetRequest(key=k.decode()))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert kv.Get(stubs.kv.KvGetRequest(key=k)).value == b"ok\xff\xfe"


def test_missing_key_is_not_found(stubs, kv):
    code, details = status_of(kv.Get, stubs.kv.KvGetRequest(key=key(b"missing")))
    assert code == grpc.StatusCode.NOT_FOUND, details


def test_remove_says_whether_the_key_was_there(stubs, kv):
    k = key()
    kv.Put(stubs.kv.KvPutRequest(key=k, value=b"v"))
    assert kv.Remove(stubs.kv.KvRemoveRequest(key=k)).found is True
    assert kv.Remove(stubs.kv.KvRemoveRequest(key=k)).found is False
    code, _ = status_of(kv.Get, stubs.kv.KvGetRequest(key=k))
    assert code == grpc.StatusCode.NOT_FOUND


def test_multi_get_mixes_hits_and_misses_in_order(stubs, kv):
    keys = [key(bytes([i, 0xff])) for i in range(50)]
    present = keys[::2]
    put = kv.MultiPut(
        stubs.kv.KvMultiPutRequest(
            entries=[stubs.kv.KvPutRequest(key=k, value=k + NOT_UTF8) for k in present]
        )
    )
    assert [r.code for r in put.results] == [OK] * len(present), put
    # Misses first and last, and a key asked twice.
    asked = [key(b"miss")] + keys + [keys[0], key(b"miss")]
    got = kv.MultiGet(stubs.kv.KvMultiGetRequest(keys=asked)).results
    assert len(got) == len(asked)
    for k, r in zip(asked, got):
        if k in present:
            assert (r.code, r.value) == (OK, k + NOT_UTF8), (k, r)
        else:
            assert (r.code, r.value) == (NOT_FOUND, b""), (k, r)


def test_multi_remove_one_result_per_key(stubs, kv):
    keys = [key() for _ in range(10)]
    kv.MultiPut(stubs.kv.KvMultiPutRequest(entries=[stubs.kv.KvPutRequest(key=k, value=b"v") for k in keys[:5]]))
    removed = kv.MultiRemove(stubs.kv.KvMultiRemoveRequest(keys=keys)).results
    assert [(r.code, r.found) for r in removed] == [(OK, True)] * 5 + [(OK, False)] * 5
    got = kv.MultiGet(stubs.kv.KvMultiGetRequest(keys=keys)).results
    assert [r.code for r in got] == [NOT_FOUND] * 10


def test_a_bad_entry_fails_alone(stubs, kv):
    good, negative, too_long = key(), key(), b"k" * (MAX_KEY + 1)
    entries = [
        stubs.kv.KvPutRequest(key=good, value=b"v"),
        stubs.kv.KvPutRequest(key=negative, value=b"v", ttl=-1),
        stubs.kv.KvPutRequest(key=too_long, value=b"v"),
    ]
    results = kv.MultiPut(stubs.kv.KvMultiPutRequest(entries=entries)).results
    assert [r.code for r in results] == [OK, INVALID_ARGUMENT, INVALID_ARGUMENT], results
    assert "negative" in results[1].message and str(MAX_KEY) in results[2].message, results
    got = kv.MultiGet(stubs.kv.KvMultiGetRequest(keys=[good, negative, too_long])).results
    assert [r.code for r in got] == [OK, NOT_FOUND, INVALID_ARGUMENT]


def test_empty_batches(stubs, kv):
    assert len(kv.MultiGet(stubs.kv.KvMultiGetRequest(keys=[])).results) == 0
    assert len(kv.MultiPut(stubs.kv.KvMultiPutRequest(entries=[])).results) == 0
    assert len(kv.MultiRemove(stubs.kv.KvMultiRemoveRequest(keys=[])).results) == 0


def test_batch_limit(stubs, kv):
    keys = [key() for _ in range(MAX_BATCH + 1)]
    at_limit = kv.MultiPut(
        stubs.kv.KvMultiPutRequest(entries=[stubs.kv.KvPutRequest(key=k, value=b"v") for k in keys[:MAX_BATCH]])
    )
    assert [r.code for r in at_limit.results] == [OK] * MAX_BATCH
    over = [
        (kv.MultiGet, stubs.kv.KvMultiGetRequest(keys=keys)),
        (kv.MultiRemove, stubs.kv.KvMultiRemoveRequest(keys=keys)),
        (kv.MultiPut, stubs.kv.KvMultiPutRequest(entries=[stubs.kv.KvPutRequest(key=k, value=b"w") for k in keys])),
    ]
    for call, request in over:
        code, details = status_of(call, request)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert str(MAX_BATCH + 1) in details and str(MAX_BATCH) in details, details
    # Refused as a whole: nothing was removed or overwritten, and the extra key was not stored.
    got = kv.MultiGet(stubs.kv.KvMultiGetRequest(keys=keys[:MAX_BATCH])).results
    assert {(r.code, r.value) for r in got} == {(OK, b"v")}
    code, _ = status_of(kv.Get, stubs.kv.KvGetRequest(key=keys[MAX_BATCH]))
    assert code == grpc.StatusCode.NOT_FOUND


def test_ttl_of_keys_with_and_without_expiry(stubs, kv):
    forever, brief = key(), key()
    kv.Put(stubs.kv.KvPutRequest(key=forever, value=b"v"))
    kv.Put(stubs.kv.KvPutRequest(key=brief, value=b"v", ttl=100))
    t = kv.Ttl(stubs.kv.KvTtlRequest(key=forever))
    assert (t.expires, t.remaining_ms) == (False, 0)
    t = kv.Ttl(stubs.kv.KvTtlRequest(key=brief))
    assert t.expires and 0 < t.remaining_ms <= 100_000, t
    assert t.remaining_ms > 100_000 - DEADLINE_S * 1000, t
    code, _ = status_of(kv.Ttl, stubs.kv.KvTtlRequest(key=key(b"missing")))
    assert code == grpc.StatusCode.NOT_FOUND


def test_touch_sets_and_clears_the_ttl(stubs, kv):
    k = key()
    kv.Put(stubs.kv.KvPutRequest(key=k, value=NOT_UTF8))
    kv.Touch(stubs.kv.KvTouchRequest(key=k, ttl=50))
    t = kv.Ttl(stubs.kv.KvTtlRequest(key=k))
    assert t.expires and 0 < t.remaining_ms <= 50_000, t
    kv.Touch(stubs.kv.KvTouchRequest(key=k, ttl=0))
    assert kv.Ttl(stubs.kv.KvTtlRequest(key=k)).expires is False
    assert kv.Get(stubs.kv.KvGetRequest(key=k)).value == NOT_UTF8, "touch keeps the value"
    code, _ = status_of(kv.Touch, stubs.kv.KvTouchRequest(key=key(b"missing"), ttl=5))
    assert code == grpc.StatusCode.NOT_FOUND
    code, details = status_of(kv.Touch, stubs.kv.KvTouchRequest(key=k, ttl=-1))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "negative" in details


def test_touch_makes_a_key_expire(stubs, kv):
    k = key()
    kv.Put(stubs.kv.KvPutRequest(key=k, value=b"v"))
    start = time.monotonic()
    kv.Touch(stubs.kv.KvTouchRequest(key=k, ttl=1))
    while True:
        try:
            kv.Get(stubs.kv.KvGetRequest(key=k))
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND, e.details()
            break
        assert time.monotonic() - start < DEADLINE_S, "never expired"
        time.sleep(0.02)
    assert time.monotonic() - start >= 0.95
    code, _ = status_of(kv.Ttl, stubs.kv.KvTtlRequest(key=k))
    assert code == grpc.StatusCode.NOT_FOUND


def test_topology_names_the_node_and_its_shard_ports(stubs, kv, wire_addr):
    t = kv.Topology(stubs.kv.KvTopologyRequest())
    assert t.ring_version == 1
    assert len(t.nodes) == 1, t
    node = t.nodes[0]
    host, port = wire_addr.rsplit(":", 1)
    assert (node.host, node.wire_port) == (host, int(port)), node
    shards = int(os.environ.get("KVMESH_SHARDS", "0")) or len(node.shard_ports)
    assert list(node.shard_ports) == [int(port) + 1 + i for i in range(shards)], node
    assert node.shard_hash.startswith("xxh3"), node


def test_garbage_body_is_an_error(stubs, channel, kv):
    for method in ("Get", "MultiGet", "MultiPut", "Touch"):
        call = channel.unary_unary("/distributed_cache.KvMesh/" + method)
        code, details = status_of(call, b"\xff" * 16)
        assert code != grpc.StatusCode.OK, details
    k = key()
    kv.Put(stubs.kv.KvPutRequest(key=k, value=b"alive"))
    assert kv.Get(stubs.kv.KvGetRequest(key=k)).value == b"alive"
