"""The `latentserve` console script: subcommands are registered from latentserve/commands/* lazily.

Each command module imports only argparse at module level, so `latentserve --help` stays fast; the heavy
work (torch, ray, onnxruntime) is imported inside its run function. Errors print as one line, no traceback:
exit 2 for latentserve's own errors (errors.py: a bad argument or request, an unknown model, an unreachable
server, ...), for missing or unreadable files (OSError) and bad values (ValueError); 1 for anything else.
"""
from __future__ import annotations

import argparse
import importlib
import os
import re
import sys

# name -> module under latentserve.commands. Order is the order shown in --help.
COMMANDS = [
    "train", "export", "eval", "bundle",
    "serve", "models", "sample", "encode", "decode", "interpolate", "edit", "augment", "bench", "latent-report",
    "cluster-demo",
]
# Options whose value may start with '-': argparse reads `--sweep -1:1:5` as two options, so such a value
# is joined to its option (`--sweep=-1:1:5`) before parsing.
DASH_VALUE_OPTIONS = ("--sweep",)
_DASH_VALUE = re.compile(r"-[\d.]")


def join_dash_values(argv: list[str]) -> list[str]:
    """argv with `OPTION -VALUE` written as `OPTION=-VALUE` for the DASH_VALUE_OPTIONS."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        if out and out[-1] in DASH_VALUE_OPTIONS and _DASH_VALUE.match(arg) and "--" not in argv[:i]:
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="latentserve", description="Serve and train latent generative image models.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = f"latentserve.commands.{name.replace('-', '_')}"  # latent-report -> latent_report
        importlib.import_module(module).register(sub)  # command modules import their heavy deps lazily
    return parser


def main(argv: list[str] | None = None) -> int:
    # grpc's C core logs failed TLS handshakes (and other INFO lines) to stderr by default; the command's
    # error is the one line the user reads (set before any command imports grpc)
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    parser = build_parser()
    args = parser.parse_args(join_dash_values(sys.argv[1:] if argv is None else list(argv)))
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from latentserve.errors import LatentServeError

    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("latentserve: interrupted", file=sys.stderr)
        return 130
    except (LatentServeError, OSError, ValueError) as exc:  # OSError: missing, unreadable or busy files and ports
        if args.debug:
            raise
        print(f"latentserve {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # grpc errors and the unexpected: still one line unless --debug
        if args.debug:
            raise
        details = getattr(exc, "details", None)
        msg = details() if callable(details) else str(exc)
        code = getattr(exc, "code", None)
        prefix = f"{code().name}: " if callable(code) else f"{type(exc).__name__}: "
        print(f"latentserve {args.command}: error: {prefix}{msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
