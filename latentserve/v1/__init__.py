"""Generated protobuf/gRPC code for latentserve.v1 (built by `python -m latentserve.protogen`, not committed)."""
