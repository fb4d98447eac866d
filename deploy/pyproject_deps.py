"""Prints the pip requirements of latentserve (base + extras) from pyproject.toml, for the Docker images.

    python deploy/pyproject_deps.py [--extras gpu,train] > requirements.txt

The Dockerfiles install dependencies in their own layer before copying the source, so a code change does
not reinstall Ray or torch; this reads them from pyproject.toml (the one list) instead of a copy that could
drift. The `gpu` extra replaces plain `onnxruntime` (both install the same `onnxruntime` module, so having
both breaks one of them) with `onnxruntime-gpu[cuda,cudnn]`, whose CUDA and cuDNN come as wheels: the
python:3.11-slim image then needs only the host's NVIDIA driver. Standard library only (Python >= 3.11).
"""
from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

DEFAULT_PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
# onnxruntime-gpu's own extras pull the NVIDIA CUDA runtime + cuDNN wheels it was built against.
GPU_RUNTIME_EXTRAS = "cuda,cudnn"


def requirement_name(req: str) -> str:
    """The normalized distribution name of a requirement string ('ray[serve]==2.60.*' -> 'ray')."""
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
    if not m:
        raise ValueError(f"not a requirement: {req!r}")
    return re.sub(r"[-_.]+", "-", m.group(1)).lower()


def parse_extras(text: str) -> list[str]:
    """'gpu, train' -> ['gpu', 'train'] (empty string -> [])."""
    return [e.strip() for e in text.replace(" ", ",").split(",") if e.strip()]


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    """Base dependencies plus those of each extra, in pyproject order, adjusted for the gpu extra."""
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise SystemExit(f"unknown extra(s) {', '.join(unknown)}; pyproject.toml has: {', '.join(sorted(optional))}")
    reqs: list[str] = list(project.get("dependencies", []))
    for extra in extras:
        reqs.extend(optional[extra])
    if "gpu" in extras:
        reqs = [r for r in reqs if requirement_name(r) != "onnxruntime"]
        out = []
        for r in reqs:
            if requirement_name(r) == "onnxruntime-gpu" and "[" not in r.split(";")[0]:
                name_end = re.match(r"\s*[A-Za-z0-9][A-Za-z0-9._-]*", r).end()
                r = f"{r[:name_end]}[{GPU_RUNTIME_EXTRAS}]{r[name_end:]}"
            out.append(r)
        reqs = out
    seen: set[str] = set()
    unique = []
    for r in reqs:  # the same requirement listed by two extras (e.g. onnx in train and bench) once
        if r not in seen:
            seen.add(r)
            unique.append(r)
    return unique


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--extras", default="", help="comma-separated extras of pyproject.toml (e.g. gpu or train)")
    p.add_argument("--pyproject", type=Path, default=DEFAULT_PYPROJECT)
    args = p.parse_args(argv)
    sys.stdout.write("".join(r + "\n" for r in requirements(args.pyproject, parse_extras(args.extras))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
