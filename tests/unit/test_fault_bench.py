"""The fault benchmark's accounting (latentserve/tools/fault_bench.py): outage = the longest gap without a
successful call after the fault, refused-connection window, and the Redis-down figures."""
from __future__ import annotations

from latentserve.tools.fault_bench import FaultBenchConfig, _Record, _report, format_fault_report


def test_report_counts_failures_outage_and_recovery():
    rec = _Record()
    for t in (1.0, 2.0, 3.0, 9.0, 10.0):  # OK calls: a gap from 3 to 9 after the fault at 2.5
        rec.add(t - 0.1, t, "latent", "OK")
    rec.add(3.5, 3.6, "latent", "UNAVAILABLE")
    rec.add(4.0, 4.05, "handle", "UNAVAILABLE")
    rec.add(4.1, 4.13, "handle", "UNAVAILABLE")
    rec.add(7.2, 7.3, "handle", "OK")  # Redis back at 7.0
    rec.refused += [1.0, 3.0, 3.5]
    r = _report(FaultBenchConfig(fault="redis-down"), rec, [11, 12], 0.0, 2.5, 7.0, 10.0)
    assert r["serving_processes"] == 2 and r["connections_refused_s"] == 0.52
    assert r["latent"]["failed"] == 1 and r["latent"]["failed_by_status"] == {"UNAVAILABLE": 1}
    assert r["latent"]["outage_s"] == 6.0
    assert r["handle"]["failed_call_ms_max"] == 50.0 and r["handle"]["recovered_after_s"] == 0.3
    text = format_fault_report(r)
    assert "refused for 0.52 s" in text and "first OK 0.3 s after Redis returned" in text



def test_kill_replica_report_says_when_the_serving_processes_were_back():
    rec = _Record()
    rec.add(0.9, 1.0, "latent", "OK")
    rec.restored = 4.5
    r = _report(FaultBenchConfig(fault="kill-replica"), rec, [11, 12], 0.0, 2.5, None, 10.0)
    assert r["serving_restored_s"] == 2.0 and r["connections_refused_s"] == 0.0
    assert "serving processes back to 2 after 2.0 s" in format_fault_report(r)
    rec.restored = None
    assert "(not within the run)" in format_fault_report(_report(FaultBenchConfig(fault="kill-replica"), rec, [11],
                                                                  0.0, 2.5, None, 10.0))
