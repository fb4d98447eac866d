"""`latentserve export`: a training run -> a new version in the model repository (ONNX + TorchScript + manifest).

Only argparse at module level; torch and the exporter are imported inside `run`.
"""
from __future__ import annotations

import argparse

from latentserve.commands import positive_int as _positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export a training run into the model repository (ONNX + TorchScript, parity-checked)",
        description="Export a training run (its checkpoint.pt) as <repo>/<name>/<version>/: encoder/decoder (or "
                    "probe) graphs as ONNX and TorchScript with a dynamic batch axis, parity-checked against "
                    "eager PyTorch; for generative models also the latent space (knobs, PCA, per-class GMM) "
                    "fitted on encoded training images; and manifest.json with sha256 checksums.")
    p.add_argument("--run", required=True, help="training run directory (holding checkpoint.pt) or a checkpoint file")
    p.add_argument("--name", required=True, help="model name in the repository, e.g. shapes-gan")
    p.add_argument("--repo", default=None, help="model repository root (default: the bundled models/repository)")
    p.add_argument("--version", type=_positive_int, default=None, help="version number (default: next free one)")
    p.add_argument("--probe", default=None,
                   help="probe model used to evaluate / guide this model (default: <data>-probe)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--exporter", choices=("auto", "legacy", "dynamo"), default="auto",
                   help="ONNX exporter: legacy TorchScript-based (fast, opset as asked) or torch.export-based "
                        "(dynamo); auto = legacy when available, else dynamo (default)")
    p.add_argument("--no-latents", action="store_true", help="skip fitting the latent space (no knobs/GMM)")
    p.add_argument("--max-latent-fit", type=_positive_int, default=12000,
                   help="at most this many training images are encoded for the latent fit (default 12000)")
    p.add_argument("--gmm-components", type=_positive_int, default=10,
                   help="components of the per-class latent GMM (default 10)")
    p.add_argument("--gmm-covariance", choices=("auto", "diag", "full", "anchors"), default="auto",
                   help="covariance of the GMM components; auto = full up to latent size 256, else diagonal; "
                        "anchors = --gmm-components encoded training images per class, each a small diagonal "
                        "component sized by its nearest neighbours (up to 4096)")
    p.add_argument("--gmm-bandwidth", type=float, default=0.5,
                   help="anchors only: component std as a multiple of the anchors' local spacing (default 0.5)")
    p.add_argument("--knob-moves", choices=("ridge", "local"), default="ridge",
                   help="anchors only: move a code along each knob's global direction (ridge), or along its "
                        "read-out's gradient within the nearest anchors' span (local: for codes that follow a "
                        "factor nonlinearly); default ridge")
    p.add_argument("--knob-source", choices=("auto", "encoded", "samples"), default="auto",
                   help="fit factor knobs on encoded training images, or on prior samples labelled by the probe "
                        "(InterFaceGAN); auto = samples for the GAN when its probe is in the repository")
    p.add_argument("--no-knob-readouts", dest="knob_readouts", action="store_false",
                   help="skip the knobs' nonlinear read-outs (small MLPs that make target values land more exactly)")
    p.add_argument("--parity-atol", type=float, default=1e-4, metavar="TOL",
                   help="largest allowed difference of the ONNX / TorchScript outputs from eager PyTorch, absolute "
                        "part (default 1e-4; at most 1e-2). A flow trained well past its recipe may need a little "
                        "more")
    p.add_argument("--seed", type=int, default=0, help="seed of the latent-fit subset and GMM init (default 0)")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="device to load the checkpoint on (default cpu)")
    p.add_argument("--require-gates", action="store_true",
                   help="then evaluate the new version as `latentserve eval` does (metrics written into its "
                        "manifest; needs its probe in the repository) and exit 2, one line per failed quality "
                        "gate, unless every gate passes (the version stays in the repository either way)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time

    import torch

    from latentserve.models.export import export_run

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    record = export_run(args.run, args.name, repo_root=args.repo, version=args.version, opset=args.opset,
                        fit_latents=not args.no_latents, max_latent_fit=args.max_latent_fit, probe=args.probe,
                        exporter=args.exporter, seed=args.seed, device=args.device, knob_source=args.knob_source,
                        knob_readouts=args.knob_readouts, parity_atol=args.parity_atol,
                        gmm_components=args.gmm_components, gmm_covariance=args.gmm_covariance,
                        gmm_bandwidth=args.gmm_bandwidth, knob_moves=args.knob_moves)
    m = record.manifest
    print(f"exported {record.name} v{record.version} ({record.family}) -> {record.path}  [{time.time() - t0:.1f}s]")
    for g, spec in sorted(m["graphs"].items()):
        par = m["parity"][g]
        ins = ", ".join(f"{n} {spec['inputs'][n][0]}{tuple(spec['inputs'][n][1])}"
                        for n in spec.get("input_names", spec["inputs"]))
        outs = ", ".join(f"{n} {spec['outputs'][n][0]}{tuple(spec['outputs'][n][1])}"
                         for n in spec.get("output_names", spec["outputs"]))
        print(f"  {g}: {spec['onnx']} + {spec['torchscript']}  ({ins}) -> ({outs})  parity max abs: "
              f"onnx {par['onnx_max_abs']:.2e}, torchscript {par['torchscript_max_abs']:.2e}")
    if m.get("knobs"):
        print("  knobs: " + ", ".join(
            k["name"] + (f" (R2 {k['r2_fit']:.3f})" if k.get("r2_fit") is not None else "") for k in m["knobs"]))
    if m.get("probe"):
        print(f"  probe: {m['probe']}  (evaluate with: latentserve eval --model {record.name}"
              + (f" --repo {args.repo}" if args.repo else "") + ")")
    total = sum(f["bytes"] for f in m["files"].values())
    print(f"  files: {len(m['files'])} ({total / 1e6:.2f} MB), opset {m['versions']['opset']}, "
          f"exporter {m['versions'].get('onnx_exporter')}")
    if args.require_gates:
        from latentserve.models.gates import factor_knobs

        return require_gates(args.repo, record.name, record.version, factor_knobs(m), record.family,
                             args.threads or 1, "export")
    return 0


def require_gates(repo, name: str, version: int, knobs: list[str], family: str, threads: int, command: str) -> int:
    """Evaluate one version (metrics into its manifest), print its gates; 2 with one line per failure."""
    import sys

    from latentserve.models import gates
    from latentserve.models.evaluate import evaluate_record

    metrics = evaluate_record(repo, name, version, threads=threads)
    g = gates.compute_gates(family, metrics, knobs)
    print(gates.format_table(f"{name} v{version}", g))
    lines = gates.failures(g)
    for line in lines:
        print(f"latentserve {command}: gate failed: {name} v{version} {line}", file=sys.stderr)
    return 2 if lines else 0
