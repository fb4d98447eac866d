"""The HTTP/JSON door: a FastAPI app on Ray Serve's HTTP proxy over the same operations as gRPC, plus the
latent explorer page (static/). schemas.py = the typed JSON bodies, convert.py = JSON <-> core calls,
errors.py = error kinds -> HTTP answers, api.py = the routes, ingress.py = the Serve deployments."""
