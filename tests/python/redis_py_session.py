"""A redis-py session through keygate, over RESP2 and RESP3.

Usage: redis_py_session.py PORT. Exits non-zero (with a traceback) on the
first difference from what Redis itself would answer.
"""
import sys

import redis


def session(port: int, protocol: int) -> None:
    r = redis.Redis(host="127.0.0.1", port=port, protocol=protocol, decode_responses=True)
    assert r.ping() is True
    assert r.set(f"py:{protocol}:k", "v") is True
    assert r.get(f"py:{protocol}:k") == "v"
    assert r.hset(f"py:{protocol}:h", mapping={"a": "1", "b": "2"}) == 2
    assert r.hgetall(f"py:{protocol}:h") == {"a": "1", "b": "2"}
    assert r.incr(f"py:{protocol}:n") == 1
    pipe = r.pipeline(transaction=True)
    pipe.incr(f"py:{protocol}:n").incr(f"py:{protocol}:n").get(f"py:{protocol}:k")
    assert pipe.execute() == [2, 3, "v"]
    assert r.mget([f"py:{protocol}:k", "py:missing"]) == ["v", None]
    info = r.info()
    assert "redis_version" in info, info
    r.lpush(f"py:{protocol}:l", "x")
    popped = r.blpop([f"py:{protocol}:l"], timeout=1)
    assert list(popped) == [f"py:{protocol}:l", "x"], popped
    r.close()


if __name__ == "__main__":
    port = int(sys.argv[1])
    for proto in (2, 3):
        session(port, proto)
    print("redis-py ok")
