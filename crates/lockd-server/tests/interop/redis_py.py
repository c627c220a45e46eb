"""Drives lockd with Python's stock `redis` client, in RESP2 and RESP3.

Usage: redis_py.py PORT AUTH_KEY. Exits non-zero (an assertion) on any mismatch.
"""
import sys
import threading
import time

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

port, key = int(sys.argv[1]), sys.argv[2]

for proto in (2, 3):
    a = redis.Redis(port=port, password=key, protocol=proto)
    b = redis.Redis(port=port, password=key, protocol=proto)
    k = f"py:{proto}"
    assert a.ping() is True
    t1 = a.execute_command("ACQUIRE", "EX", 0, k)
    assert isinstance(t1, int) and t1 > 0, t1
    assert b.execute_command("ACQUIRE", "EX", 0, k) is None

    got = {}
    waiter = threading.Thread(target=lambda: got.setdefault("t", b.execute_command("ACQUIRE", "EX", 10000, k)))
    waiter.start()
    for _ in range(500):
        info = a.execute_command("INSPECT", k)
        waiters = info[b"waiters"] if isinstance(info, dict) else info[info.index(b"waiters") + 1]
        if waiters:
            break
        time.sleep(0.01)
    else:
        raise AssertionError("b never queued")
    assert a.execute_command("RELEASE", "EX", k) == 1
    waiter.join(10)
    assert got["t"] > t1, got

    session = b.execute_command("SESSION")
    locks = a.execute_command("LOCKS", session)
    assert len(locks) == 1, locks
    stats = a.execute_command("STATS")
    fields = stats if isinstance(stats, dict) else dict(zip(stats[::2], stats[1::2]))
    assert fields[b"locks_held"] >= 1, fields
    try:
        a.execute_command("ACQUIRE", "XX", 0, k)
        raise AssertionError("a bad mode was accepted")
    except redis.ResponseError as e:
        assert "SH or EX" in str(e)
    assert b.execute_command("RELEASEALL") == 1

# redis-py retries failed authentication with backoff, as it does against Redis: no retries.
no_retry = Retry(NoBackoff(), 0)
try:
    redis.Redis(port=port, password="wrong", retry=no_retry).ping()
    raise AssertionError("a wrong password was accepted")
except redis.AuthenticationError:
    pass
try:
    redis.Redis(port=port, retry=no_retry).execute_command("ACQUIRE", "EX", 0, "x")
    raise AssertionError("an unauthenticated ACQUIRE was accepted")
except redis.AuthenticationError:
    pass
except redis.ResponseError as e:
    assert "NOAUTH" in str(e)
print("redis-py", redis.__version__, "ok")
