"""A native replica's serving-process group, pure parts (services/frontends/grpc/replica.py): how many serving
processes a node gets by default, and the merge of their statistics."""
from __future__ import annotations

from latentserve.services.config import load_config
from latentserve.services.frontends.grpc.replica import merge_stats, serving_process_count


def test_two_serving_processes_where_the_node_has_two_cpus_and_handles_live_in_redis():
    auto = load_config({"redis_url": "redis://127.0.0.1:6379/0"}, use_env=False)
    assert auto.frontend.serving_processes == 0
    assert serving_process_count(auto, cpus=1) == 1
    assert serving_process_count(auto, cpus=2) == 2 and serving_process_count(auto, cpus=64) == 2
    # in-process handles are one process's: one serving process (restarted when it dies)
    assert serving_process_count(load_config({"handle_store": "memory"}, use_env=False), cpus=2) == 1
    assert serving_process_count(load_config({"serving_processes": 3}, use_env=False), cpus=1) == 3


def test_merged_stats_add_counts_and_keep_settings():
    a = {"uptime_s": 5.0, "requests": {"Decode": 3}, "frontend": "native",
         "models": {"m": {"default_version": 2, "max_batch_size": 64, "preferred_batch_size": 16,
                          "methods": {"decode": {"batches": 2, "max_requests_per_batch": 4, "recent": [1],
                                                 "model_seconds": 0.5}}}},
         "handles": {"redis": {"state": "closed", "backoff_s": 0.2}}}
    b = {"uptime_s": 7.0, "requests": {"Decode": 1, "Encode": 2}, "frontend": "native",
         "models": {"m": {"default_version": 2, "max_batch_size": 64, "preferred_batch_size": 16,
                          "methods": {"decode": {"batches": 5, "max_requests_per_batch": 9, "recent": [2],
                                                 "model_seconds": 0.25}}}},
         "handles": {"redis": {"state": "open", "backoff_s": 0.4}}}
    m = merge_stats([a, b])
    assert m["uptime_s"] == 7.0 and m["requests"] == {"Decode": 4, "Encode": 2} and m["frontend"] == "native"
    model = m["models"]["m"]
    assert (model["default_version"], model["max_batch_size"], model["preferred_batch_size"]) == (2, 64, 16)
    assert model["methods"]["decode"] == {"batches": 7, "max_requests_per_batch": 9, "recent": [1, 2],
                                          "model_seconds": 0.75}
    assert m["handles"]["redis"] == {"state": "closed", "backoff_s": 0.4}
    assert merge_stats([a]) == a
    assert merge_stats([{"rows_per_batch": {1: 2, 4: 1}}, {"rows_per_batch": {1: 1}}]) == {"rows_per_batch": {1: 3, 4: 1}}
