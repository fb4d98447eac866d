"""`latentserve models [NAME]`: the models a server serves (a table), or one model's details.

Also owns the connection options every client command shares (--target/-t, --token, --timeout, --app, --tls-*) and the
one place LATENTSERVE_TARGET / LATENTSERVE_TOKEN are read: `add_client_options(parser)` and `connect(args)`.
Only argparse and os at module level; the gRPC client is imported inside the functions that need it.
"""
from __future__ import annotations

import argparse
import os

DEFAULT_TARGET = "127.0.0.1:9000"
TARGET_ENV = "LATENTSERVE_TARGET"
TOKEN_ENV = "LATENTSERVE_TOKEN"


def add_client_options(p: argparse.ArgumentParser) -> None:
    """The connection options of every client command."""
    g = p.add_argument_group("connection")
    g.add_argument("-t", "--target", default=None,
                   help=f"server host:port (default: ${TARGET_ENV} or {DEFAULT_TARGET})")
    g.add_argument("--token", default=None, help=f"API token, sent as 'authorization: Bearer' (default: ${TOKEN_ENV})")
    g.add_argument("--timeout", type=float, default=30.0, help="per-call deadline in seconds (default 30)")
    g.add_argument("--app", default=None, help="Ray Serve application name, when the server runs several")
    add_tls_options(g)


def add_tls_options(g) -> None:
    """The client's --tls-* options (read by `resolve_tls`), on a parser or an argument group."""
    g.add_argument("--tls-ca", default=None, metavar="PEM",
                   help="connect with TLS, verifying the server's certificate against this CA bundle")
    g.add_argument("--tls-cert", default=None, metavar="PEM",
                   help="with --tls-key: this client's certificate, for a server that requires one (mutual TLS)")
    g.add_argument("--tls-key", default=None, metavar="PEM", help="the private key of --tls-cert")
    g.add_argument("--tls-server-name", default=None, metavar="NAME",
                   help="verify the server's certificate for NAME instead of the target's host")


def resolve_target(args: argparse.Namespace) -> str:
    return args.target or os.environ.get(TARGET_ENV) or DEFAULT_TARGET


def resolve_token(args: argparse.Namespace) -> str | None:
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV)
    return token or None


def resolve_tls(args: argparse.Namespace):
    """A ClientTls for the --tls-* options, None without them (plaintext)."""
    if not (args.tls_ca or args.tls_cert or args.tls_key or args.tls_server_name):
        return None
    from latentserve.client import ClientTls
    from latentserve.errors import ValidationError

    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValidationError("--tls-cert and --tls-key go together (the client certificate and its key)")
    return ClientTls(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key, server_name=args.tls_server_name)


def connect(args: argparse.Namespace):
    """A LatentClient for the parsed connection options."""
    from latentserve.client import LatentClient

    return LatentClient(resolve_target(args), token=resolve_token(args), timeout=args.timeout, app_name=args.app,
                        tls=resolve_tls(args))


def add_version_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--version", dest="model_version", type=int, default=None,
                   help="model version (default: the newest the server has)")


def register(sub) -> None:
    p = sub.add_parser("models", help="list the served models, or show one model's details",
                       description="List the models a latentserve server serves, or show one model's classes, "
                                   "factors, knobs, sample sources and metrics.")
    p.add_argument("name", nargs="?", help="a model name: show its details")
    p.add_argument("--all-versions", action="store_true", help="list every version, not only the newest")
    add_version_option(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_client_options(p)
    p.set_defaults(func=run)


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def _label_check(info) -> str:
    """Per sample source: the default label-check threshold (models/class_check.py) or off."""
    sources = [s for s in info.sample_sources if s != "guided"]
    checks = {s: info.class_check_for(s) for s in sources}
    if not any(checks.values()):
        return "off by default"
    return "by default " + ", ".join(f"{s}: " + (f"redraw below p(label) {t:g}" if t > 0 else "off")
                                     for s, t in checks.items())


def _weak(k) -> bool:
    """A factor knob the quality gate judged too weak (requests need --allow-weak-knobs)."""
    return k.kind == "factor" and not k.usable


def _gates_line(info) -> str:
    """'geometric judge, gates 9/12 passed' (or that the model was never judged)."""
    if not info.gates:
        return "no gates (the server predates them)"
    n_ok = sum(g.passed for g in info.gates)
    return f"{info.judge or 'no'} judge, gates {n_ok}/{len(info.gates)} passed"


def _handles_line(info) -> str:
    """'redis, durable' / 'memory, NOT durable: <why>' (or that the server does not say)."""
    hs = info.handle_store
    if hs is None:
        return "not reported (the server predates it)"
    return f"{hs.backend}, durable" if hs.durable else f"{hs.backend}, NOT durable: {hs.detail}"


def _sizes_line(info) -> str:
    """What `--size` accepts: 'native only', '16..1024 px' or '32..512 px in steps of 8 (one latent cell)'."""
    s = info.output_sizes
    if s is None or s.min_px == s.max_px:
        return "native size only"
    step = "" if s.multiple_of_px <= 1 else f" in steps of {s.multiple_of_px} (one latent cell)"
    return f"--size {s.min_px}..{s.max_px} px{step}, 0 = native"


def _gate_value(g) -> str:
    return "not measured" if g.value != g.value else _fmt(g.value)  # NaN: not measured


def _classes(info) -> str:
    """'12' or, for classes that are combinations of class factors, '12 (3 shape x 4 texture)'."""
    n = str(len(info.class_names))
    if not info.class_factors:
        return n
    return f"{n} ({' x '.join(f'{len(c)} {f}' for f, c in info.class_factors.items())})"


def describe(info) -> str:
    """One model's details as text (a ModelInfo from the client)."""
    h, w = info.image_size
    out = [f"{info.name} v{info.version}  (versions: {', '.join(map(str, info.versions)) or info.version})",
           f"  family      {info.family}   backend {info.backend or '?'}   prior {info.prior or '?'}",
           f"  image       {h}x{w} RGB    latent D={info.latent_dim}",
           f"  sizes       {_sizes_line(info)}",
           f"  classes     {', '.join(f'{i}:{c}' for i, c in enumerate(info.class_names))}",
           f"  sources     {', '.join(info.sample_sources) or '-'}   (default {info.default_sample_source})",
           f"  label check {_label_check(info)}",
           f"  quality     {_gates_line(info)}",
           f"  handles     {_handles_line(info)}",
           f"  methods     {', '.join(info.interpolation_methods) or '-'}",
           f"  limits      {info.max_images_per_request or '?'} images/request, "
           f"{info.max_interpolation_steps or '?'} interpolation steps"
           + (f", {info.max_output_pixels} output pixels" if info.max_output_pixels else "")]
    if info.class_factors:
        out.append("  class factors (--class-factor FACTOR=CLASS)")
        for name, classes in info.class_factors.items():
            out.append(f"    {name:<12} {', '.join(classes)}")
    if info.factors:
        out.append("  factors")
        for f in info.factors:
            out.append(f"    {f.name:<12} [{_fmt(f.low)}, {_fmt(f.high)}] {f.unit}".rstrip()
                       + (f"  - {f.doc}" if f.doc else ""))
    if info.knobs:
        out.append("  knobs")
        for k in info.knobs:
            rng = f"[{_fmt(k.low)}, {_fmt(k.high)}]" if k.kind == "factor" else "amount only"
            judged = "" if k.r2_judged != k.r2_judged else f"  judged r2={k.r2_judged:.3f}"
            weak = "  BELOW THE GATE: refused unless --allow-weak-knobs" if _weak(k) else ""
            out.append(f"    {k.name:<12} {k.kind:<7} {rng:<18} {k.unit:<10} r2={k.r2_fit:.3f}{judged}{weak}")
    if info.gates:
        out.append(f"  gates ({info.judge or 'no'} judge)")
        for g in info.gates:
            need = "reported" if g.op == "present" else f"{g.op} {g.threshold:g}"
            out.append(f"    {'pass' if g.passed else 'FAIL'}  {g.name:<28} {_gate_value(g):<12} (needs {need}; "
                       f"{g.judge or '-'})")
    if info.metrics:
        out.append("  metrics")
        for key in sorted(info.metrics):
            out.append(f"    {key:<32} {_fmt(info.metrics[key])}")
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    with connect(args) as client:
        if args.name:
            info = client.get_model(args.name, args.model_version)
            print(json.dumps(asdict(info), indent=2) if args.json else describe(info))
            return 0
        models = client.list_models(all_versions=args.all_versions)
    if args.json:
        print(json.dumps([asdict(m) for m in models], indent=2))
        return 0
    if not models:
        print(f"no models served at {resolve_target(args)}")
        return 0
    rows = [[m.name, str(m.version), m.family,
             "x".join(map(str, m.image_size))  # a vector model: and the sizes it draws
             + (f" ({m.output_sizes.min_px}..{m.output_sizes.max_px} px)"
                if m.output_sizes and m.output_sizes.min_px != m.output_sizes.max_px else ""),
             str(m.latent_dim), _classes(m),
             ",".join(k.name + ("*" if _weak(k) else "") for k in m.knobs if k.kind == "factor") or "-",
             ",".join(m.sample_sources), m.judge or "-",
             f"{sum(g.passed for g in m.gates)}/{len(m.gates)}" if m.gates else "-"] for m in models]
    print(_table(rows, ["MODEL", "VER", "FAMILY", "IMAGE", "D", "CLASSES", "KNOBS", "SOURCES", "JUDGE", "GATES"]))
    if any(_weak(k) for m in models for k in m.knobs):
        print("* below its quality gate: requests using it are refused unless they pass --allow-weak-knobs")
    if models[0].handle_store is not None:  # one store per server
        print(f"handles: {_handles_line(models[0])}")
    return 0
