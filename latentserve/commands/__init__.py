"""CLI subcommands: one small module each, exposing `register(subparsers)`; heavy imports live inside run()."""
