"""`latentserve bench --cache` without servers: option checks, the side-by-side table and the CLI wiring."""
from __future__ import annotations

import pytest

from latentserve.errors import ValidationError
from latentserve.tools.cache_bench import CacheBenchConfig, format_cache_table, summary


def test_config_checks():
    CacheBenchConfig().validate()
    for bad in ({"requests": 5}, {"format": "jpeg"}, {"modes": ("disk",)}, {"modes": ()},
                {"target": "127.0.0.1:9000", "serve_args": ("--colocate",)}):
        with pytest.raises(ValidationError):
            CacheBenchConfig(**bad).validate()


def test_table_puts_hit_and_miss_side_by_side_with_the_ratio():
    miss, hit = summary([5.0, 6.0, 7.0, 40.0]), summary([0.5, 0.7, 0.9, 4.0])
    report = {"config": {"format": "png", "requests": 4}, "model": {"name": "m", "version": 1, "latent_dim": 8},
              "modes": {"memory": {"miss": miss, "hit": hit, "miss_over_hit_p50": round(miss["p50_ms"] / hit["p50_ms"], 2)},
                        "off": {"miss": miss}},
              "checks": [{"check": "memory: hit p50 <= 2.0 ms", "value": hit["p50_ms"], "pass": True}]}
    text = format_cache_table(report)
    row = next(line for line in text.splitlines() if line.startswith("memory"))
    assert row.split() == ["memory", "6.500", "39.010", "0.800", "3.907", "8.12x"]
    assert next(line for line in text.splitlines() if line.startswith("off")).split()[-1] == "-"
    assert "PASS  memory: hit p50 <= 2.0 ms: 0.8" in text


def test_cli_refuses_start_with_cache(capsys):
    from latentserve.cli import main

    assert main(["bench", "--cache", "--start"]) != 0
    assert "drop --start" in capsys.readouterr().err
