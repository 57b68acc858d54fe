"""The old DistributedCache clients, pointed at kvmesh, unchanged: grpcio stubs generated from
proto/distributed_cache.proto talk to a real node (see conftest.py)."""

import socket
import threading
import time
import uuid

import grpc
import pytest

# Generous, because a busy 2-core machine may be slow; tests poll, so a fast one is not slowed.
DEADLINE_S = 30
MAX_KEY = 64 * 1024  # the node's default --max-key-size
SERVICE = "/distributed_cache.DistributedCache/"


def fresh(prefix="k"):
    """A key no other test uses, so tests can share one node."""
    return f"{prefix}-{uuid.uuid4().hex}"


def status_of(call, *args, **kwargs):
    with pytest.raises(grpc.RpcError) as err:
        call(*args, **kwargs)
    return err.value.code(), err.value.details()


def assert_serving(stubs, cache):
    key = fresh("canary")
    assert cache.Put(stubs.pb.PutRequest(key=key, value="alive")).success
    assert cache.Get(stubs.pb.GetRequest(key=key)).value == "alive"


def wait_until_gone(stubs, cache, key):
    start = time.monotonic()
    while True:
        try:
            cache.Get(stubs.pb.GetRequest(key=key))
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND, e.details()
            return
        assert time.monotonic() - start < DEADLINE_S, f"{key} never expired"
        time.sleep(0.02)


# The old client behaviour.


def test_put_then_get(stubs, cache):
    key = fresh()
    reply = cache.Put(stubs.pb.PutRequest(key=key, value="hello world", ttl=0))
    assert reply.success is True
    got = cache.Get(stubs.pb.GetRequest(key=key))
    assert (got.value, got.success) == ("hello world", True)


def test_missing_key_is_not_found(stubs, cache):
    code, details = status_of(cache.Get, stubs.pb.GetRequest(key=fresh("missing")))
    assert code == grpc.StatusCode.NOT_FOUND, details


def test_ttl_one_second_then_gone(stubs, cache):
    key = fresh("ttl")
    start = time.monotonic()
    assert cache.Put(stubs.pb.PutRequest(key=key, value="brief", ttl=1)).success
    got = cache.Get(stubs.pb.GetRequest(key=key))
    if time.monotonic() - start < 0.9:  # only meaningful if this machine was quick enough
        assert got.value == "brief"
    wait_until_gone(stubs, cache, key)
    # It expired, and not before its second was up (50 ms of slack for clock granularity).
    assert time.monotonic() - start >= 0.95


def test_ttl_zero_never_expires(stubs, cache):
    key = fresh("forever")
    assert cache.Put(stubs.pb.PutRequest(key=key, value="v", ttl=0)).success
    assert cache.Get(stubs.pb.GetRequest(key=key)).value == "v"


def test_overwrite(stubs, cache):
    key = fresh()
    assert cache.Put(stubs.pb.PutRequest(key=key, value="first", ttl=0)).success
    assert cache.Put(stubs.pb.PutRequest(key=key, value="second", ttl=0)).success
    assert cache.Get(stubs.pb.GetRequest(key=key)).value == "second"


def test_overwrite_replaces_the_ttl(stubs, cache):
    key, witness = fresh(), fresh("witness")
    assert cache.Put(stubs.pb.PutRequest(key=key, value="a", ttl=1)).success
    # Written after the key's first TTL was set, so it expires no earlier than that TTL would.
    assert cache.Put(stubs.pb.PutRequest(key=witness, value="w", ttl=1)).success
    assert cache.Put(stubs.pb.PutRequest(key=key, value="b", ttl=0)).success
    wait_until_gone(stubs, cache, witness)
    assert cache.Get(stubs.pb.GetRequest(key=key)).value == "b"


def test_remove(stubs, cache):
    key = fresh()
    assert cache.Put(stubs.pb.PutRequest(key=key, value="v")).success
    assert cache.Remove(stubs.pb.RemoveRequest(key=key)).success is True
    code, _ = status_of(cache.Get, stubs.pb.GetRequest(key=key))
    assert code == grpc.StatusCode.NOT_FOUND


def test_remove_of_missing_key_succeeds(stubs, cache):
    assert cache.Remove(stubs.pb.RemoveRequest(key=fresh("never-was"))).success is True


def test_old_fields_are_accepted_and_ignored(stubs, cache):
    key = fresh()
    request = stubs.pb.PutRequest(key=key, value="v", ttl=0, is_replica=True, success=True)
    assert cache.Put(request).success
    assert cache.Get(stubs.pb.GetRequest(key=key)).value == "v"


def test_deadline_header_is_accepted(stubs, cache):
    key = fresh()
    assert cache.Put(stubs.pb.PutRequest(key=key, value="v"), timeout=10).success
    assert cache.Get(stubs.pb.GetRequest(key=key), timeout=10).value == "v"


# Concurrency.


def test_ten_threads_thousand_writes_each_then_reads(stubs, grpc_addr):
    threads, per_thread = 10, 1000
    prefix = fresh("conc")
    failures = []

    def run(t, phase):
        # One channel per thread, as separate client processes would have: SO_REUSEPORT spreads
        # their connections over the shards, and keys owned elsewhere are forwarded.
        with grpc.insecure_channel(grpc_addr) as ch:
            cache = stubs.pb_grpc.DistributedCacheStub(ch)
            for i in range(per_thread):
                key, value = f"{prefix}-{t}-{i}", f"value-{t}-{i}"
                try:
                    if phase == "write":
                        ok = cache.Put(stubs.pb.PutRequest(key=key, value=value), timeout=DEADLINE_S).success
                    else:
                        ok = cache.Get(stubs.pb.GetRequest(key=key), timeout=DEADLINE_S).value == value
                except grpc.RpcError as e:
                    ok = f"{e.code()}: {e.details()}"
                if ok is not True:
                    failures.append((phase, key, ok))

    for phase in ("write", "read"):
        workers = [threading.Thread(target=run, args=(t, phase)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert failures == [], f"{len(failures)} of {threads * per_thread} {phase}s failed: {failures[:5]}"


# Unicode and large values.


@pytest.mark.parametrize(
    "key,value",
    [
        ("ключ", "значение"),
        ("日本語のキー", "値は日本語"),
        ("emoji-🔑", "🚀✨ zwj: 👩‍💻 flags: 🇳🇱"),
        ("combining-é", "e\u0301 and \u00e9 are different keys"),
        ("empty-value", ""),
    ],
)
def test_unicode_keys_and_values(stubs, cache, key, value):
    key = f"{key}-{uuid.uuid4().hex}"
    assert cache.Put(stubs.pb.PutRequest(key=key, value=value)).success
    assert cache.Get(stubs.pb.GetRequest(key=key)).value == value


def test_one_mib_values(stubs, cache):
    for fill in ("x", "é"):  # one byte and two bytes per character
        key = fresh("big")
        value = (fill * (1 << 20))[: (1 << 20) // len(fill.encode())]
        assert len(value.encode()) == 1 << 20
        assert cache.Put(stubs.pb.PutRequest(key=key, value=value)).success
        assert cache.Get(stubs.pb.GetRequest(key=key)).value == value


def test_values_past_grpcio_default_receive_limit(stubs, channel, grpc_addr):
    """grpcio clients refuse replies over 4 MiB unless they raise their receive limit."""
    key, value = fresh("huge"), "y" * (5 << 20)
    cache = stubs.pb_grpc.DistributedCacheStub(channel)
    assert cache.Put(stubs.pb.PutRequest(key=key, value=value)).success
    code, _ = status_of(cache.Get, stubs.pb.GetRequest(key=key))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    options = [("grpc.max_receive_message_length", 32 << 20)]
    with grpc.insecure_channel(grpc_addr, options=options) as raised:
        big_cache = stubs.pb_grpc.DistributedCacheStub(raised)
        assert big_cache.Get(stubs.pb.GetRequest(key=key)).value == value


# Errors are status codes.


def test_key_at_the_limit_is_accepted(stubs, cache):
    key = ("k" * MAX_KEY)[:-32] + uuid.uuid4().hex
    assert len(key) == MAX_KEY
    assert cache.Put(stubs.pb.PutRequest(key=key, value="v")).success
    assert cache.Get(stubs.pb.GetRequest(key=key)).value == "v"


def test_oversized_key_is_invalid_argument(stubs, cache):
    key = "k" * (MAX_KEY + 1)
    for call, request in (
        (cache.Put, stubs.pb.PutRequest(key=key, value="v")),
        (cache.Get, stubs.pb.GetRequest(key=key)),
        (cache.Remove, stubs.pb.RemoveRequest(key=key)),
    ):
        code, details = status_of(call, request)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert str(MAX_KEY + 1) in details and str(MAX_KEY) in details, details


def test_negative_ttl_is_invalid_argument(stubs, cache):
    key = fresh()
    code, details = status_of(cache.Put, stubs.pb.PutRequest(key=key, value="v", ttl=-1))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "negative" in details, details
    code, _ = status_of(cache.Get, stubs.pb.GetRequest(key=key))
    assert code == grpc.StatusCode.NOT_FOUND, "a refused put must not be stored"


def test_unknown_method_is_unimplemented(stubs, channel, cache):
    for path in (SERVICE + "Touch", "/distributed_cache.Other/Get", "/nope"):
        call = channel.unary_unary(path)
        code, details = status_of(call, b"")
        assert code == grpc.StatusCode.UNIMPLEMENTED, (path, details)
    assert_serving(stubs, cache)


@pytest.mark.parametrize(
    "body",
    [b"\xff" * 16, b"\x0a\x05ab", b"\x0a\x02\xff\xfe", bytes(range(256)) * 4],
    ids=["bad-varint", "truncated", "key-not-utf8", "noise"],
)
def test_garbage_request_body_is_an_error(stubs, channel, cache, body):
    for method in ("Get", "Put", "Remove"):
        call = channel.unary_unary(SERVICE + method)
        code, details = status_of(call, body)
        assert code != grpc.StatusCode.OK, details
    assert_serving(stubs, cache)


def test_garbage_bytes_on_the_connection(stubs, cache, grpc_addr):
    host, port = grpc_addr.rsplit(":", 1)
    for garbage in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x00" * 64, bytes(range(256)) * 64):
        with socket.create_connection((host, int(port)), timeout=DEADLINE_S) as s:
            try:
                s.sendall(garbage)
                s.recv(4096)  # whatever the node answers (GOAWAY), then it closes
            except OSError:
                pass
    assert_serving(stubs, cache)


def test_value_that_is_not_utf8_is_failed_precondition(stubs, cache, wire_client):
    key = fresh("binary")
    stored = wire_client.call(stubs.wire.Op(code=stubs.wire.OP_PUT, key=key.encode(), value=b"ok\xff\xfe"))
    assert stored.status == stubs.wire.STATUS_OK, stored
    code, details = status_of(cache.Get, stubs.pb.GetRequest(key=key))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "bytes API" in details, details
