"""The HTTP door's speed, from the explorer page's point of view, next to gRPC in one run on one server.

Rows:
- slider (users = 1, 8): what the page does while a knob is dragged. Each user samples one image (JSON, with
  its latent, as the page does), then loops: a new knob position -> POST edit {latent, moves} with
  `Accept: image/png` -> the PNG decoded to pixels (what the browser does before drawing), the next position only
  after the image (the page's coalescing: one request in flight, the newest position wins). Positions are
  random in the knob's range, so no request repeats one the result cache has seen (a real drag revisits
  positions; this is the cache-miss worst case). Time = knob change to pixels, p50 / p99.
- browser (with --browser): the same loop in headless Chromium (Debian's chromium + chromedriver) on the real
  page: a slider input event -> the redrawn <img> loaded; the page's own Performance-API timing
  (window.latentExplorer.drawMs).
- decode single / bulk, HTTP and gRPC: Decode of 1 latent per request at concurrency 8 (PNG bytes back, the
  HTTP side with `Accept: image/png`) and of 64 latents per request, 2 in flight (raw uint8 over gRPC, base64
  PNGs in JSON over HTTP, decoded to pixels: each door's quickest way to pixels; JSON `array` output is slower
  still), every latent unique; images/s, p50, and HTTP / gRPC.

By default it starts `latentserve serve` (the bundled models, free ports) and stops it after; `--url URL
--grpc HOST:PORT` measures a running server. Run on an idle machine if you can; figures move with load.

    python benchmarks/http_bench.py --browser               # bundled shapes-vae, knob x
    python benchmarks/http_bench.py --url http://127.0.0.1:8000/ --grpc 127.0.0.1:9000 --token "$TOKEN"
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def _pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


# ------------------------------------------------------------------------------------------------ HTTP side
async def slider_users(url: str, headers: dict, model: str, knob: dict, users: int, duration: float,
                       warmup: float) -> dict:
    import aiohttp

    lat_ms: list[float] = []
    stop_at = time.perf_counter() + warmup + duration
    measure_from = time.perf_counter() + warmup

    async def user(i: int) -> None:
        rng = np.random.default_rng(1000 + i)
        async with aiohttp.ClientSession(headers=headers) as s:  # one keep-alive connection, like a tab
            async with s.post(f"{url}api/v1/models/{model}/sample", json={"n": 1, "seed": 1 + i}) as r:
                r.raise_for_status()
                latent = (await r.json())["latents"][0]
            while time.perf_counter() < stop_at:
                target = float(rng.uniform(knob["low"], knob["high"]))
                t0 = time.perf_counter()
                async with s.post(f"{url}api/v1/models/{model}/edit",
                                  json={"inputs": [{"latent": latent}], "moves": [{"knob": knob["name"], "target": target}]},
                                  headers={"Accept": "image/png"}) as r:
                    r.raise_for_status()
                    _pixels(await r.read())
                if t0 >= measure_from:
                    lat_ms.append((time.perf_counter() - t0) * 1e3)

    await asyncio.gather(*(user(i) for i in range(users)))
    return {"n": len(lat_ms), "p50": _pct(lat_ms, 50), "p99": _pct(lat_ms, 99), "rate": len(lat_ms) / duration}


async def http_decode(url: str, headers: dict, model: str, dim: int, per_request: int, concurrency: int,
                      duration: float, warmup: float) -> dict:
    import aiohttp

    lat_ms: list[float] = []
    images = [0]
    stop_at = time.perf_counter() + warmup + duration
    measure_from = time.perf_counter() + warmup
    counter = [0]

    async def worker(s) -> None:
        rng = np.random.default_rng()
        while time.perf_counter() < stop_at:
            counter[0] += 1
            z = rng.standard_normal((per_request, dim)).astype(np.float32)
            body = {"latents": [{"values": row, "label": 0} for row in z.tolist()], "format": "png"}
            t0 = time.perf_counter()
            hdr = {"Accept": "image/png"} if per_request == 1 else {}
            async with s.post(f"{url}api/v1/models/{model}/decode", json=body, headers=hdr) as r:
                r.raise_for_status()
                if per_request == 1:
                    _pixels(await r.read())
                else:
                    [_pixels(base64.b64decode(img["png"])) for img in (await r.json())["images"]]
            if t0 >= measure_from:
                lat_ms.append((time.perf_counter() - t0) * 1e3)
                images[0] += per_request

    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(headers=headers, connector=conn) as s:
        await asyncio.gather(*(worker(s) for _ in range(concurrency)))
    return {"n": len(lat_ms), "p50": _pct(lat_ms, 50), "p99": _pct(lat_ms, 99), "rate": images[0] / duration}


# ------------------------------------------------------------------------------------------------ gRPC side
async def grpc_decode(target: str, token: str, model: str, dim: int, per_request: int, concurrency: int,
                      duration: float, warmup: float) -> dict:
    import grpc

    from latentserve.v1 import latent_pb2 as pb
    from latentserve.v1 import latent_pb2_grpc as pb_grpc

    md = (("authorization", f"Bearer {token}"),) if token else None
    lat_ms: list[float] = []
    images = [0]
    stop_at = time.perf_counter() + warmup + duration
    measure_from = time.perf_counter() + warmup
    fmt = pb.IMAGE_FORMAT_PNG if per_request == 1 else pb.IMAGE_FORMAT_RAW_UINT8
    async with grpc.aio.insecure_channel(target) as ch:
        stub = pb_grpc.LatentServiceStub(ch)

        async def worker() -> None:
            rng = np.random.default_rng()
            while time.perf_counter() < stop_at:
                z = rng.standard_normal((per_request, dim)).astype(np.float32)
                req = pb.DecodeRequest(model=model, format=fmt,
                                       latents=[pb.Latent(values=row, label=0) for row in z.tolist()])
                t0 = time.perf_counter()
                resp = await stub.Decode(req, metadata=md, timeout=60)
                if per_request == 1:
                    _pixels(resp.images[0].encoded)
                else:
                    [np.frombuffer(i.tensor.data, np.uint8) for i in resp.images]
                if t0 >= measure_from:
                    lat_ms.append((time.perf_counter() - t0) * 1e3)
                    images[0] += per_request

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"n": len(lat_ms), "p50": _pct(lat_ms, 50), "p99": _pct(lat_ms, 99), "rate": images[0] / duration}


# ------------------------------------------------------------------------------------------------ browser
def browser_slider(url: str, token: str, knob: dict, draws: int) -> dict:
    """The page in headless Chromium: `draws` slider changes, each after the previous image was drawn."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(arg)
    opts.binary_location = "/usr/bin/chromium"
    d = webdriver.Chrome(options=opts, service=Service("/usr/bin/chromedriver"))
    try:
        d.get(url)
        if token:
            d.execute_script("sessionStorage.setItem('latentserve-token', arguments[0])", token)
            d.get(url)
        deadline = time.time() + 60
        while not d.execute_script("return document.querySelectorAll('#grid img').length") and time.time() < deadline:
            time.sleep(0.1)
        rng = np.random.default_rng(7)
        for _ in range(draws):
            before = d.execute_script("return window.latentExplorer.draws")
            d.execute_script("const s = document.getElementById('knob-' + arguments[0]); s.value = arguments[1];"
                             "s.dispatchEvent(new Event('input'));", knob["name"], float(rng.uniform(knob["low"], knob["high"])))
            while d.execute_script("return window.latentExplorer.draws") == before:
                time.sleep(0.002)
        ms = d.execute_script("return window.latentExplorer.drawMs")[-draws:]
    finally:
        d.quit()
    return {"n": len(ms), "p50": _pct(ms, 50), "p99": _pct(ms, 99), "rate": float("nan")}


# ------------------------------------------------------------------------------------------------ main
def _start_server(repo: str | None) -> tuple[subprocess.Popen, str, str]:
    http_port, grpc_port = _free_port(), _free_port()
    cmd = [sys.executable, "-m", "latentserve", "serve", "--port", str(grpc_port), "--http-port", str(http_port),
           "--metrics-port", "0"] + (["--repo", repo] if repo else [])
    env = {k: v for k, v in os.environ.items() if k != "LATENTSERVE_API_TOKEN"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{http_port}/"
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"http_bench: latentserve serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "healthz", timeout=5):
                break
        except OSError:
            time.sleep(0.5)
    time.sleep(3)  # the gRPC replica comes up around the same time
    return proc, url, f"127.0.0.1:{grpc_port}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=None, help="a running server's HTTP address (default: start one)")
    p.add_argument("--grpc", default=None, help="the same server's gRPC host:port (with --url)")
    p.add_argument("--token", default=os.environ.get("LATENTSERVE_API_TOKEN", ""), help="API token of --url")
    p.add_argument("--repo", default=None, help="repository for the started server (default: the bundled one)")
    p.add_argument("--model", default="shapes-vae")
    p.add_argument("--knob", default="x", help="the factor knob the slider moves (default x)")
    p.add_argument("--users", default="1,8", help="concurrent slider users (default 1,8)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per row (default 10)")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--browser", action="store_true", help="also measure the real page in headless Chromium")
    p.add_argument("--browser-draws", type=int, default=200)
    args = p.parse_args(argv)

    proc = None
    if args.url:
        if not args.grpc:
            p.error("--url needs --grpc (the same server's gRPC address)")
        url, target, token = args.url.rstrip("/") + "/", args.grpc, args.token
    else:
        _log("http_bench: starting latentserve serve ...")
        proc, url, target = _start_server(args.repo)
        token = ""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        req = urllib.request.Request(f"{url}api/v1/models/{args.model}", headers=headers)
        with urllib.request.urlopen(req, timeout=30) as r:
            import json

            info = json.load(r)
        knob = next(k for k in info["knobs"] if k["name"] == args.knob)
        dim = int(info["latent_shape"][0])
        rows = []
        for users in [int(u) for u in args.users.split(",")]:
            _log(f"http_bench: slider, {users} user(s) ...")
            rows.append((f"slider, {users} user{'s' if users > 1 else ''} (HTTP edit -> PNG)",
                         asyncio.run(slider_users(url, headers, args.model, knob, users, args.duration, args.warmup))))
        if args.browser:
            _log("http_bench: slider in headless Chromium ...")
            rows.append(("slider, 1 user, in Chromium (page's own timing)",
                         browser_slider(url, token, knob, args.browser_draws)))
        pairs = []
        for per, conc, name in ((1, 8, "decode single, c=8"), (64, 2, "decode bulk 64, 2 in flight")):
            _log(f"http_bench: {name} ...")
            h = asyncio.run(http_decode(url, headers, args.model, dim, per, conc, args.duration, args.warmup))
            g = asyncio.run(grpc_decode(target, token, args.model, dim, per, conc, args.duration, args.warmup))
            pairs.append((name, h, g))
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()

    # rows for benchmarks/README.md's table (the machine column is left for the load seen during the run)
    print(f"\nmodel {args.model}, knob {args.knob}, {args.duration:g} s per row, {os.cpu_count()} CPUs\n")
    print("| date (UTC) | machine | row | requests | p50 ms | p99 ms | rate (x gRPC) |")
    print("|---|---|---|---|---|---|---|")
    day = time.strftime("%Y-%m-%d", time.gmtime())
    for name, r in rows:
        rate = "-" if r["rate"] != r["rate"] else f"{r['rate']:,.1f} req/s"
        print(f"| {day} | | {name} | {r['n']} | {r['p50']:.1f} | {r['p99']:.1f} | {rate} |")
    for name, h, g in pairs:
        print(f"| {day} | | {name}, HTTP | {h['n']} | {h['p50']:.1f} | {h['p99']:.1f} | "
              f"{h['rate']:,.1f} img/s ({h['rate'] / g['rate']:.2f}) |")
        print(f"| {day} | | {name}, gRPC | {g['n']} | {g['p50']:.1f} | {g['p99']:.1f} | {g['rate']:,.1f} img/s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
