"""CPU cost of the handle stores without Redis: the node's store (a SQLite file shared by the node's serving
processes, services/storage/node_store.py) next to the in-process LRU, per call of put_many / get_many at a few
batch sizes, with the ratio. CPU time of this process (time.process_time), so a loaded machine does not
inflate the figures the way wall time would.

    python benchmarks/handle_store_bench.py [--dim 128] [--calls 300]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from latentserve.services.storage.handles import InProcessLatentStore, make_handle
from latentserve.services.storage.node_store import NodeLatentStore, node_store_path


def per_call_us(store, batches: list[list]) -> tuple[float, float]:
    t = time.process_time()
    for b in batches:
        store.put_many(b)
    put = (time.process_time() - t) / len(batches) * 1e6
    t = time.process_time()
    for b in batches:
        store.get_many([h for h, _, _ in b])
    return put, (time.process_time() - t) / len(batches) * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dim", type=int, default=128, help="latent dimension (default 128)")
    p.add_argument("--calls", type=int, default=300, help="calls per batch size (default 300)")
    a = p.parse_args()
    rng = np.random.default_rng(0)
    folder = tempfile.mkdtemp(prefix="latentserve-handle-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    path = node_store_path(0, folder)
    node, memory = NodeLatentStore(path), InProcessLatentStore()
    print(f"| rows per call | node put us | memory put us | put ratio | node get us | memory get us | get ratio |")
    print("|---|---|---|---|---|---|---|")
    for n in (1, 16, 64):
        batches = [[(make_handle("m", 1, z, 0), z, 0) for z in rng.standard_normal((n, a.dim)).astype(np.float32)]
                   for _ in range(a.calls)]
        (np_, ng), (mp, mg) = per_call_us(node, batches), per_call_us(memory, batches)
        print(f"| {n} | {np_:.0f} | {mp:.0f} | {np_ / mp:.1f}x | {ng:.0f} | {mg:.0f} | {ng / mg:.1f}x |")
    node.close()
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)
    os.rmdir(folder)


if __name__ == "__main__":
    main()
