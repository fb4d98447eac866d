"""The flow's scaling curve: geometric class fidelity and bits/dim of shapes-flow against training steps.

Trains one flow on 32x32 shapes with the bundled recipe (FlowConfig defaults, batch 64, one thread) and at
each checkpoint step judges tempered prior samples with the geometric judge (no learned weights) and measures
test bits/dim. Prints a markdown table and writes a PNG curve plus the samples at the last step.

    python examples/flow_scaling.py --steps 300,600,1200,2400,4800 --out flow_scaling
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", default="300,600,1200,2400,4800", help="comma-separated checkpoint steps")
    ap.add_argument("--temperatures", default="0.5,0.7,1.0", help="sampling temperatures judged at each step")
    ap.add_argument("--n-per-class", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="FlowConfig field")
    ap.add_argument("--out", default="flow_scaling")
    args = ap.parse_args()

    import torch

    from latentserve.models.data import load_dataset
    from latentserve.models.data.render import contact_sheet
    from latentserve.models.families import get_family
    from latentserve.models.judges.geometric import judge_shapes
    from latentserve.models.judges.scoring import to_u8
    from latentserve.models.train import build_family_config

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    checkpoints = sorted(int(s) for s in args.steps.split(","))
    temps = [float(t) for t in args.temperatures.split(",")]
    family_cls = get_family("flow")
    overrides = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    data = load_dataset("shapes")
    fam = family_cls(build_family_config(family_cls, overrides), data.meta(), "cpu")
    to_t = lambda im: torch.from_numpy(im.astype(np.float32) / 127.5 - 1.0).permute(0, 3, 1, 2)  # noqa: E731
    x_test, y_test = to_t(data.test.images[:1000]), torch.from_numpy(data.test.labels[:1000]).long()
    rng = np.random.default_rng(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, t0, step = [], time.time(), 0
    for target in checkpoints:
        while step < target:
            idx = rng.integers(0, len(data.train.images), 64)
            fam.train_step(to_t(data.train.images[idx]), torch.from_numpy(data.train.labels[idx]).long(), None, step)
            step += 1
        ev = fam.evaluate(x_test, y_test, None)
        row = {"step": step, "cpu_s": round(time.time() - t0), "bpd": round(ev["bpd"], 3)}
        for t in temps:
            im = to_u8(fam.sample_grid(args.n_per_class, args.seed, t).numpy())
            y = np.repeat(np.arange(fam.n_classes), args.n_per_class)
            lab = judge_shapes(im).labels
            row[f"T={t}"] = [round(float((lab[y == c] == c).mean()), 3) for c in range(fam.n_classes)]
            if step == checkpoints[-1]:
                contact_sheet(im[:: max(1, args.n_per_class // 10)], ncol=10).save(out / f"samples_T{t}.png")
        rows.append(row)
        print(json.dumps(row), flush=True)
    (out / "scaling.json").write_text(json.dumps(rows, indent=1))
    print("\n| steps | bits/dim | " + " | ".join(f"judged per class, T={t}" for t in temps) + " |")
    print("|---|---|" + "---|" * len(temps))
    for r in rows:
        print(f"| {r['step']} | {r['bpd']} | " + " | ".join("/".join(f"{v:.0%}" for v in r[f'T={t}']) for t in temps) + " |")
    _plot(rows, temps, out / "scaling.png")


def _plot(rows: list[dict], temps: list[float], path: Path) -> None:
    """A small line chart drawn with PIL (no plotting dependency): mean judged fidelity per temperature."""
    from PIL import Image, ImageDraw

    w, h, m = 480, 300, 40
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    d.rectangle([m, m // 2, w - m // 2, h - m], outline="black")
    steps = np.log2([r["step"] for r in rows])
    span = max(steps.max() - steps.min(), 1e-9)
    colours = ["#d62728", "#2ca02c", "#1f77b4", "#9467bd"]
    for k, t in enumerate(temps):
        pts = [(m + (s - steps.min()) / span * (w - 1.5 * m), h - m - np.mean(r[f"T={t}"]) * (h - 1.5 * m))
               for s, r in zip(steps, rows)]
        d.line(pts, fill=colours[k % 4], width=2)
        d.text((w - 120, m // 2 + 5 + 12 * k), f"T={t}", fill=colours[k % 4])
    for s, r in zip(steps, rows):
        d.text((m + (s - steps.min()) / span * (w - 1.5 * m) - 10, h - m + 5), str(r["step"]), fill="black")
    d.text((5, 5), "judged class fidelity (mean over classes) vs training steps", fill="black")
    img.save(path)


if __name__ == "__main__":
    main()
