"""redis-py's RedisCluster against keygate's cluster emulation, over RESP2
and RESP3: the client discovers a one-node cluster at keygate's address and
sends everything there.

Usage: redis_py_cluster.py PORT. Exits non-zero (with a traceback) on the
first difference from what a Redis Cluster would answer.
"""
import sys

from redis.cluster import RedisCluster


def session(port: int, protocol: int) -> None:
    r = RedisCluster(host="127.0.0.1", port=port, protocol=protocol, decode_responses=True)
    nodes = r.get_nodes()
    assert [(n.host, n.port) for n in nodes] == [("127.0.0.1", port)], nodes
    assert r.ping() is True
    p = f"pyc:{protocol}"
    assert r.set(f"{p}:k", "v") is True
    assert r.get(f"{p}:k") == "v"
    # One slot: MGET as it is; several slots: the client splits it itself.
    assert r.mset({f"{{{p}}}:a": "1", f"{{{p}}}:b": "2"}) is True
    assert r.mget([f"{{{p}}}:a", f"{{{p}}}:b", f"{{{p}}}:none"]) == ["1", "2", None]
    assert r.mget_nonatomic([f"{p}:k", f"{{{p}}}:a", f"{p}:missing"]) == ["v", "1", None]
    assert r.incr(f"{p}:n") == 1
    pipe = r.pipeline()
    for i in range(20):
        pipe.set(f"{p}:pipe:{i}", str(i))
    for i in range(20):
        pipe.get(f"{p}:pipe:{i}")
    pipe.incr(f"{p}:n")
    out = pipe.execute()
    assert out == [True] * 20 + [str(i) for i in range(20)] + [2], out
    assert r.cluster_info()["cluster_state"] == "ok"
    assert r.keyslot("foo") == 12182
    r.close()


if __name__ == "__main__":
    port = int(sys.argv[1])
    for proto in (2, 3):
        session(port, proto)
    print("redis-py cluster ok")
