"""`latentserve decode MODEL latents.npz -o out.png|DIR`: latents (or handles) -> images.

`-o` ending in .png writes one grid; anything else is a folder that gets one PNG per image (0000.png, ...), or
with --svg one SVG document per image (vector models: their layers, 0000.svg, ...). --size draws at that many px
(vector models: 16..1024; texture models: multiples of their cell, see `latentserve models NAME`; a raster model
only at its own size).
Latents come from an .npz (`latents` + `labels`, as `encode` / `sample --save-latents` write) or an .npy with
--class for the label; or pass server handles with --handle.
"""
from __future__ import annotations

import argparse

from latentserve.commands.models import add_client_options, add_version_option, connect


def register(sub) -> None:
    p = sub.add_parser("decode", help="decode latents (.npz/.npy) or handles into images",
                       description="Decode latents or handles with a served model into a PNG grid or a folder "
                                   "of PNGs.")
    p.add_argument("model", help="model name")
    p.add_argument("latents", nargs="?", default=None, help=".npz with latents + labels, or .npy with latents")
    p.add_argument("--handle", action="append", default=[], help="a server handle (repeatable), instead of a file")
    p.add_argument("--class", dest="class_name", default=None,
                   help="class name or index for latents without labels (.npy); overrides the file's labels")
    p.add_argument("--rows", default=None, metavar="I,J,..", help="decode only these rows of the file")
    p.add_argument("--cols", type=int, default=None, help="grid columns (default ceil(sqrt(n)))")
    p.add_argument("--size", type=int, default=0, metavar="PX",
                   help="image size in px (0 = the model's own; vector models draw 16..1024, texture "
                        "models the sizes `latentserve models NAME` lists)")
    p.add_argument("--svg", action="store_true",
                   help="vector models: write each image's layers as an SVG document (-o is then a folder)")
    p.add_argument("-o", "--output", default="decoded.png",
                   help="grid .png, or a folder for one PNG (or with --svg one SVG) per image")
    add_version_option(p)
    add_client_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from latentserve.errors import ValidationError
    from latentserve.client import load_latents, make_grid, save_png

    if bool(args.latents) == bool(args.handle):
        raise ValidationError("give a latents file or --handle (one of them)")
    out = Path(args.output)
    if args.svg and out.suffix.lower() == ".png":
        raise ValidationError("--svg writes one .svg per image: give -o a folder, not a .png")
    fmt, size = ("svg" if args.svg else "uint8"), args.size
    with connect(args) as client:
        if args.handle:
            images = client.decode(args.model, handles=args.handle, version=args.model_version, format=fmt,
                                   output_size=size)
        else:
            z, y = load_latents(args.latents)
            if args.rows:
                try:
                    idx = [int(i) for i in args.rows.split(",") if i.strip()]
                except ValueError:
                    raise ValidationError(f"--rows must be comma-separated integers, got {args.rows!r}") from None
                bad = [i for i in idx if not -len(z) <= i < len(z)]
                if bad:
                    raise ValidationError(f"--rows {bad} out of range: the file has {len(z)} latents")
                z, y = z[idx], (None if y is None else y[idx])
            if args.class_name is not None:
                y = np.full((len(z),), client.model_info(args.model, args.model_version).class_index(args.class_name))
            if y is None:
                raise ValidationError(f"{args.latents} has no labels: pass --class NAME")
            images = client.decode(args.model, z, y, version=args.model_version, format=fmt, output_size=size)
    if args.svg:
        out.mkdir(parents=True, exist_ok=True)
        for i, doc in enumerate(images):
            (out / f"{i:04d}.svg").write_bytes(doc)
        print(f"wrote {len(images)} SVG documents to {out}/")
    elif out.suffix.lower() == ".png":
        save_png(make_grid(images, args.cols), str(out))
        print(f"wrote {out}: grid of {len(images)} images of {images.shape[1]}x{images.shape[2]}")
    else:
        out.mkdir(parents=True, exist_ok=True)
        for i, im in enumerate(images):
            save_png(im, str(out / f"{i:04d}.png"))
        print(f"wrote {len(images)} PNGs of {images.shape[1]}x{images.shape[2]} to {out}/")
    return 0
