"""`latentserve encode MODEL img1.png ... -o latents.npz`: images -> latents (+ labels, confidences, handles).

The .npz holds `latents` float32 (N, D), `labels` int64 (N,), `confidence` float32 (N,) (absent when the
server reports none: a class head that is not calibrated), `files` (N,), `class_names` and, with --handles,
`handles` (N,): the format `decode`, `interpolate` and `edit` read back.
"""
from __future__ import annotations

import argparse

from latentserve.commands.models import add_client_options, add_version_option, connect


def register(sub) -> None:
    p = sub.add_parser("encode", help="encode image files into latents (.npz)",
                       description="Encode image files with a served model: latents, predicted (or given) "
                                   "classes and their confidence, optionally handles.")
    p.add_argument("model", help="model name")
    p.add_argument("images", nargs="+", help="image files (PNG/JPEG) of the model's size")
    p.add_argument("-o", "--output", default="latents.npz", help="output .npz (default latents.npz)")
    p.add_argument("--class", dest="class_name", default=None,
                   help="class name or index of every image (default: predicted by the encoder)")
    p.add_argument("--sample-posterior", action="store_true", help="VAE: sample q(z|x) instead of its mean")
    p.add_argument("--seed", type=int, default=0, help="seed for --sample-posterior")
    p.add_argument("--refine-steps", type=int, default=0,
                   help="gan/vae: refine each latent by this many gradient steps on the reconstruction error")
    p.add_argument("--refine-lr", type=float, default=0.0, help="refinement learning rate (0 = server default)")
    p.add_argument("--refine-feature-weight", type=float, default=0.0,
                   help="add the probe-feature distance with this weight (0 = pixels only)")
    p.add_argument("--handles", action="store_true", help="store the latents server-side and print handles")
    add_version_option(p)
    add_client_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from latentserve.client import load_image, save_latents

    images = [load_image(path) for path in args.images]
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise ValueError(f"images differ in size: {sorted(shapes)}; resize them to the model's size first")
    with connect(args) as client:
        info = client.model_info(args.model, args.model_version)
        labels = None if args.class_name is None else info.class_index(args.class_name)
        res = client.encode(args.model, images, labels=labels, return_handles=args.handles,
                            sample_posterior=args.sample_posterior, seed=args.seed, version=args.model_version,
                            refine_steps=args.refine_steps,
                            refine={"learning_rate": args.refine_lr, "feature_weight": args.refine_feature_weight})
    names = info.class_names
    calibrated = len(res.confidence) == len(res.labels)
    save_latents(args.output, res.latents, res.labels, confidence=res.confidence if calibrated else None,
                 files=list(args.images), class_names=list(names), handles=res.handles or None)
    for i, path in enumerate(args.images):
        y = int(res.labels[i])
        conf = f"{res.confidence[i]:.3f}" if calibrated else "-"
        handle = f"\t{res.handles[i]}" if res.handles else ""
        refined = f"\tmse {res.mse_before[i]:.5f} -> {res.mse_after[i]:.5f}" if res.mse_before is not None else ""
        print(f"{path}\t{names[y] if 0 <= y < len(names) else y}\t{conf}{refined}{handle}")
    if not calibrated:
        accuracy = info.metrics.get("encoder_accuracy")
        measured = f"evaluated class accuracy {accuracy:.3f}" if accuracy is not None else "not evaluated"
        guess = "; the predicted classes are a guess" if args.class_name is None else ""
        print(f"confidence -: {info.name} v{res.version}'s class head is not calibrated ({measured}){guess}")
    if res.mse_before is not None:
        print(f"refinement ({res.refine_steps} steps): reconstruction MSE {res.mse_before.mean():.5f} -> "
              f"{res.mse_after.mean():.5f} (mean over {len(res.mse_after)} images)")
    print(f"wrote {args.output}: latents {res.latents.shape[0]}x{res.latents.shape[1]} "
          f"from {res.model or args.model} v{res.version}")
    return 0
