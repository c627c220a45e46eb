"""The Python client against a real lockd."""

import socket
import threading
import time

import pytest

import lockd
from lockd.aio import AsyncClient

from conftest import KEY


def client(addr):
    return lockd.Client(addr, auth_key=KEY)


def test_a_lock_is_held_until_the_block_ends(server):
    a, b = client(server), client(server)
    with a.lock("invoices", timeout=1) as lk:
        assert lk.token > 0 and not lk.lost
        assert b.try_lock("invoices") is None
        holders = b.inspect("invoices")["holders"]
        assert [h["session"] for h in holders] == [a.session]
        assert holders[0]["token"] == lk.token
    assert b.inspect("invoices")["holders"] == []
    assert b.try_lock("invoices") is not None


def test_an_exception_in_the_block_releases_the_lock(server):
    a, b = client(server), client(server)
    with pytest.raises(RuntimeError):
        with a.lock(["x", "y"]):
            raise RuntimeError("boom")
    assert b.try_lock(["x", "y"]) is not None


def test_shared_locks_share_and_exclude_exclusive_ones(server):
    a, b, c = client(server), client(server), client(server)
    s1 = a.lock("r", mode="sh")
    s2 = b.lock("r", mode="sh")
    assert c.try_lock("r", mode="ex") is None
    s1.release()
    s2.release()
    assert c.try_lock("r", mode="ex") is not None


def test_a_wait_is_granted_or_times_out_and_tokens_increase(server):
    a, b = client(server), client(server)
    first = a.lock("job")
    with pytest.raises(lockd.Timeout):
        b.lock("job", timeout=0.2)
    threading.Timer(0.3, first.release).start()
    second = b.lock("job", timeout=5)
    assert second.token > first.token


def test_one_client_does_not_take_a_conflicting_lock_twice(server):
    a = client(server)
    held = a.lock("k")
    with pytest.raises(lockd.HeldHere):
        a.lock("k")
    held.release()
    a.lock("k").release()


def test_a_deadlock_is_refused(server):
    a, b = client(server), client(server)
    a.lock("k1")
    b.lock("k2")
    waiting = threading.Thread(target=lambda: a.lock("k2", timeout=5))
    waiting.start()
    deadline = time.time() + 5
    while not b.inspect("k2")["waiters"]:
        assert time.time() < deadline
        time.sleep(0.02)
    with pytest.raises(lockd.Deadlock) as e:
        b.lock("k1", timeout=5)
    assert e.value.session == a.session
    b.release_all()
    waiting.join(5)


def _cut(c):
    # The socket under the client dies, as when the network or the server goes away.
    c._conn._sock.shutdown(socket.SHUT_RDWR)


def test_a_lost_connection_marks_the_lock_and_resume_keeps_it(server):
    a, b = client(server), client(server)
    lk = a.lock("deploy")
    _cut(a)
    with pytest.raises(lockd.LockLost):
        a.ping()
    assert lk.lost
    assert b.try_lock("deploy") is None, "held through its grace"
    assert a.resume() is True
    assert not lk.lost
    assert [l["key"] for l in a.locks()] == ["deploy"]
    lk.release()
    assert b.try_lock("deploy") is not None


def test_after_the_grace_the_lock_is_lost(server):
    a, b = client(server), client(server)
    lk = a.lock("deploy")
    _cut(a)
    with pytest.raises(lockd.LockLost):
        a.ping()
    time.sleep(1.6)
    assert b.try_lock("deploy") is not None
    assert a.resume() is False
    assert lk.lost
    with pytest.raises(lockd.LockLost):
        lk.release()


def test_errors_are_typed(server):
    with pytest.raises(lockd.AuthError):
        lockd.Client(server, auth_key="wrong")
    a = client(server)
    with pytest.raises(ValueError):
        a.lock("k", mode="write")
    stats = a.stats()
    assert stats["locks_held"] == 0 and "grants" in stats


async def test_the_asyncio_client(server):
    a = await AsyncClient.connect(server, auth_key=KEY)
    b = await AsyncClient.connect(server, auth_key=KEY)
    async with await a.lock("aio", timeout=1) as lk:
        assert lk.token > 0
        assert await b.try_lock("aio") is None
        assert (await b.inspect("aio"))["holders"][0]["session"] == a.session
    got = await b.lock("aio", timeout=1)
    assert got.token > lk.token
    await got.release()
    with pytest.raises(lockd.Timeout):
        held = await a.lock("aio2")
        await b.lock("aio2", timeout=0.1)
    await held.release()
    await a.close()
    await b.close()
