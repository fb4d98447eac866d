"""What the largest gradient request this server allows adds to a serving process's memory.

In one fresh process: the operations over a model repository (as a serving process holds them), RSS after a
plain Sample (no torch yet), after a 1-row guided Sample (torch imported, the TorchScript graphs loaded: the
engine's fixed cost, paid at start with `latent_ops_preload`), then after each of `--repeat` guided Samples
of the largest allowed size (rows = latent_ops_max_request_rows, iterations = the most that
latent_ops_max_request_work and max_guidance_steps allow). Prints the RSS added by the request over the warm
engine, and over the process before torch.

    python benchmarks/latent_ops_memory.py                       # bundled shapes-gan, default budget
    python benchmarks/latent_ops_memory.py --set latent_ops_max_request_rows=256 --set max_images_per_request=256
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import time
from pathlib import Path


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0]) / 1024


async def main(a: argparse.Namespace) -> None:
    from latentserve.services.config import load_config
    from latentserve.services.core.calls import GuidanceOptions, SampleCall
    from latentserve.services.core.operations import LatentOperations

    overrides = {k: int(v) for k, v in (s.split("=", 1) for s in a.set)}
    cfg = load_config({"repository": a.repo, **overrides}, use_env=False)
    rows = min(cfg.latent_ops.max_request_rows, cfg.limits.max_images_per_request)
    steps = min(cfg.latent_ops.max_guidance_steps, cfg.latent_ops.max_request_work // rows)
    ops = LatentOperations.open(cfg, {a.model: a.version})
    await ops.sample(SampleCall(model=a.model, n=8, seed=1, format="raw_uint8"))
    base = rss_mb()
    await ops.sample(SampleCall(model=a.model, n=1, seed=1, format="raw_uint8", source="guided",
                                guidance=GuidanceOptions(steps=1)))
    warm = rss_mb()
    print(f"{a.model}: RSS {base:.0f} MB serving (no torch); {warm:.0f} MB with the gradient engine warm "
          f"(+{warm - base:.0f} MB: torch + graphs)", flush=True)
    for i in range(a.repeat):
        t0 = time.perf_counter()
        await ops.sample(SampleCall(model=a.model, n=rows, seed=2 + i, format="raw_uint8", source="guided",
                                    guidance=GuidanceOptions(steps=steps)))
        gc.collect()
        r = rss_mb()
        print(f"largest allowed guided Sample #{i + 1} ({rows} rows x {steps} steps, {time.perf_counter() - t0:.1f} s): "
              f"RSS {r:.0f} MB, +{r - warm:.0f} MB over the warm engine, +{r - base:.0f} MB over serving", flush=True)
    ops.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repo", default=str(Path(__file__).resolve().parents[1] / "models" / "repository"))
    p.add_argument("--model", default="shapes-gan")
    p.add_argument("--version", type=int, default=1)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--set", action="append", default=[], help="config override NAME=INT (repeatable)")
    asyncio.run(main(p.parse_args()))
