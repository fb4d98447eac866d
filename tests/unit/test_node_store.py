"""The node's handle store (services/storage/node_store.py): two stores on one file stand for two serving
processes of a node (each opens its own connection, as each process does); where handles live per config."""
from __future__ import annotations

import asyncio
import os
import time

import numpy as np
import pytest

from latentserve.errors import NotFoundError, ValidationError
from latentserve.services.config import load_config
from latentserve.services.frontends.grpc.replica import serving_process_count
from latentserve.services.storage.factory import handle_store_kind
from latentserve.services.storage.handles import make_handle
from latentserve.services.storage.node_store import NodeLatentStore, node_store_path


def _items(n: int, start: int = 0):
    zs = [np.full(4, i, np.float32) for i in range(start, start + n)]
    return [(make_handle("m", 1, z, i % 3), z, i % 3) for i, z in zip(range(start, start + n), zs)]


def test_a_handle_issued_by_one_process_resolves_on_the_other(tmp_path):
    path = str(tmp_path / "handles.sqlite3")
    a, b = NodeLatentStore(path), NodeLatentStore(path)
    items = _items(3)
    asyncio.run(a.aput_many(items))
    got = asyncio.run(b.aget_many([h for h, _, _ in items]))
    assert [(z.tolist(), label) for z, label in got] == [(z.tolist(), label) for _, z, label in items]
    a.close()  # the issuing process died: its handles stay
    assert NodeLatentStore(path).get_many([items[0][0]])[0][1] == items[0][2]
    with pytest.raises(NotFoundError, match="unknown handle 'm:1:0{32}'.*not issued on this node") as e:
        b.get_many([items[1][0], "m:1:" + "0" * 32])
    assert str(tmp_path) not in str(e.value)  # never a path
    assert b.describe()["backend"] == "node" and not b.describe()["durable"]


def test_the_store_keeps_about_the_most_recently_used(tmp_path):
    s = NodeLatentStore(str(tmp_path / "h.sqlite3"), max_entries=10, trim_every=5)
    first = _items(5)
    s.put_many(first)
    time.sleep(0.01)
    s.get_many([first[0][0]])  # used again: kept over the others
    time.sleep(0.01)
    s.put_many(_items(9, start=5))  # 14 entries: the 4 least recently used go at the trim
    assert len(s) == 10
    assert s.lookup([first[0][0]])[0] is not None and s.lookup([h for h, _, _ in first[1:]]) == [None] * 4


def test_expired_handles_are_unknown(tmp_path):
    s = NodeLatentStore(str(tmp_path / "h.sqlite3"), ttl_s=1e-3)
    items = _items(2)
    s.put_many(items)
    time.sleep(0.01)
    assert s.lookup([h for h, _, _ in items]) == [None, None]
    with pytest.raises(ValidationError, match="TTL"):
        NodeLatentStore(str(tmp_path / "h.sqlite3"), ttl_s=0)


def test_a_deleted_file_is_reopened_so_processes_never_answer_from_two_files(tmp_path):
    path = str(tmp_path / "h.sqlite3")
    a, b = NodeLatentStore(path), NodeLatentStore(path)
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)
    items = _items(1)
    a.put_many(items)  # a reopens (creates) the file
    assert b.get_many([items[0][0]])[0][1] == items[0][2]  # b reopens the same new file
    assert a.counters["reopened"] == 1 and b.counters["reopened"] == 1


def test_where_handles_live():
    native = load_config({}, use_env=False)
    assert handle_store_kind(native) == "node"
    assert handle_store_kind(load_config({"grpc_frontend": "serve"}, use_env=False)) == "memory"
    assert handle_store_kind(load_config({"handle_store": "memory"}, use_env=False)) == "memory"
    assert handle_store_kind(load_config({"redis_url": "redis://127.0.0.1:1/0"}, use_env=False)) == "redis"
    a, b = node_store_path(9000), node_store_path(9001)
    assert a != b and a.endswith(f"-{os.getuid()}-9000.sqlite3")
    with pytest.raises(ValidationError, match="handle_store"):
        load_config({"handle_store": "disk"}, use_env=False)


def test_two_serving_processes_by_default_without_redis():
    """The node's store is shared, so the default serve (no Redis) runs two serving processes where it can."""
    assert serving_process_count(load_config({}, use_env=False), cpus=2) == 2
    assert serving_process_count(load_config({}, use_env=False), cpus=1) == 1
    assert serving_process_count(load_config({"handle_store": "memory"}, use_env=False), cpus=2) == 1
