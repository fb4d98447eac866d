"""The HTTP/JSON API and the explorer page as one FastAPI app over a LatentOperations (`build_api`).

Routes (every /api/v1 route needs `Authorization: Bearer <token>` when the server has a token; the page, its
files, /healthz, /docs and /openapi.json do not):
    GET  /api/v1/models                       ListModels (?all_versions=true)
    GET  /api/v1/models/{model}               GetModel (?version=N)
    POST /api/v1/models/{model}/encode        Encode
    POST /api/v1/models/{model}/decode        Decode       } `Accept: image/png` and one image: the PNG bytes
    POST /api/v1/models/{model}/sample        Sample       } (headers X-Latentserve-Model / -Version / -Label),
    POST /api/v1/models/{model}/edit          Edit         } else JSON
    POST /api/v1/models/{model}/interpolate   Interpolate (JSON frames)
    POST /api/v1/augment                      Augment: NDJSON, one line per batch; a failure after the first
                                              line ends the stream with an ErrorBody line
    GET  /healthz                             {"status": "SERVING", "auth": whether a token is needed,
                                              "handles": {backend, durable, detail} of the handle store}
    GET  /  and /static/...                   the latent explorer (static/, package data)
Per call, like the gRPC handlers: the token check, request_timeout_s (504), the operation, errors through
errors.py, the call counted and recorded in the metrics under its RPC name; beyond max_ongoing_requests +
max_queued_requests calls in the replica, 429. Bodies over http_max_body_bytes
are refused with 413 before they are read.
"""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

import latentserve
from latentserve.errors import OverloadedError, PayloadTooLargeError
from latentserve.services.core.operations import LatentOperations, check_token
from latentserve.services.frontends.http import convert
from latentserve.services.frontends.http import schemas as s
from latentserve.services.frontends.http.errors import error_body, failure, validation_message
from latentserve.services.frontends.statuses import STATUSES
from latentserve.services.observability import metrics

STATIC_DIR = Path(__file__).with_name("static")
PNG_TYPE = "image/png"
ERRORS = {status: {"model": s.ErrorBody, "description": code} for code, status in sorted({v for v in STATUSES.values()})
          if status in (400, 401, 404, 413, 429, 503, 504)}


def wants_png(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return PNG_TYPE in accept and "application/json" not in accept


def build_api(ops: LatentOperations) -> FastAPI:
    config = ops.config
    app = FastAPI(title="latentserve", version=latentserve.__version__, responses=ERRORS,
                  description="Encode, decode, sample, interpolate and edit with latent generative image models "
                              "(the HTTP/JSON door of latentserve; the same operations as latentserve.v1 over "
                              "gRPC). Send `Authorization: Bearer <token>` when the server has a token.")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.note_status("INVALID_ARGUMENT")
        return JSONResponse(error_body("INVALID_ARGUMENT", validation_message(exc.errors())), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "NOT_FOUND" if exc.status_code == 404 else "INVALID_ARGUMENT"
        message = (f"no such resource: {request.method} {request.url.path}; see /docs" if exc.status_code == 404
                   else f"{request.method} {request.url.path}: {exc.detail}")
        return JSONResponse(error_body(code, message), status_code=exc.status_code)

    @app.middleware("http")
    async def _body_limit(request: Request, call_next):
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > config.limits.http_max_body_bytes:
            _, body = failure(PayloadTooLargeError(
                f"body: {int(length)} bytes is over the limit of {config.limits.http_max_body_bytes} bytes "
                "(http_max_body_bytes)"), request.url.path)
            return JSONResponse(body, status_code=413)
        return await call_next(request)

    # Admission like the native gRPC server's: at most max_ongoing_requests + max_queued_requests calls in
    # this replica, beyond that 429 (Serve's own queue limit would answer 503 from the proxy).
    scaling = config.scaling
    capacity = (scaling.max_ongoing_requests + scaling.max_queued_requests) if scaling.max_queued_requests >= 0 else 0
    timeout_s = scaling.request_timeout_s
    admitted = [0]

    async def call(rpc: str, request: Request, run: Callable[[], Awaitable[Any]],
                   answer: Callable[[Any], Any]) -> Any:
        """One API call: auth, admission, the operation under request_timeout_s, its answer, or the error answer."""
        ops.count(rpc)
        rec, token = metrics.begin_request(rpc)
        admitted[0] += 1
        try:
            if capacity and admitted[0] > capacity:
                raise OverloadedError(f"server is at capacity ({capacity} calls: max_ongoing_requests + "
                                      "max_queued_requests), retry later")
            check_token(config.frontend.api_token, request.headers.get("authorization", ""))
            work = run()
            result = await (asyncio.wait_for(work, timeout_s) if timeout_s else work)
            return answer(result)
        except asyncio.CancelledError:
            metrics.note_status("CANCELLED")
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes an HTTP answer, never a crashed replica
            status, body = failure(exc, rpc)
            return JSONResponse(body, status_code=status)
        finally:
            admitted[0] -= 1
            metrics.end_request(rec, token)

    def deadline() -> float:
        return time.time() + timeout_s if timeout_s else 0.0

    def images_answer(request: Request) -> Callable[[Any], Any]:
        """Generated -> the PNG bytes (Accept: image/png) or the JSON body."""
        if not wants_png(request):
            return convert.images_response

        def png(g: Any) -> Response:
            headers = {"X-Latentserve-Model": g.model, "X-Latentserve-Version": str(g.version)}
            if g.labels is not None and len(g.labels) == 1:
                headers["X-Latentserve-Label"] = str(int(g.labels[0]))
            return Response(convert.single_image(g.images), media_type=PNG_TYPE, headers=headers)
        return png

    def png_format(request: Request, body: Any) -> Any:
        if wants_png(request):
            body.format = "png"
        return body

    # -- models --------------------------------------------------------------------------------------------
    @app.get("/api/v1/models", response_model=s.ModelList, tags=["models"])
    async def list_models(request: Request, all_versions: bool = False):
        return await call("ListModels", request, lambda: ops.list_models(all_versions), lambda m: {"models": m})

    @app.get("/api/v1/models/{model}", tags=["models"], response_model=dict[str, Any])
    async def get_model(model: str, request: Request, version: int = 0):
        return await call("GetModel", request, lambda: ops.get_model(model, version), lambda m: m)

    # -- operations ----------------------------------------------------------------------------------------
    @app.post("/api/v1/models/{model}/encode", response_model=s.EncodeResponse, tags=["operations"])
    async def encode(model: str, body: s.EncodeRequest, request: Request):
        end = deadline()
        return await call("Encode", request, lambda: ops.encode(convert.encode_call(model, body, end)),
                          convert.encode_response)

    @app.post("/api/v1/models/{model}/decode", response_model=s.ImagesResponse, tags=["operations"],
              responses={200: {"content": {PNG_TYPE: {}}}})
    async def decode(model: str, body: s.DecodeRequest, request: Request):
        png_format(request, body)
        return await call("Decode", request, lambda: ops.decode(convert.decode_call(model, body)),
                          images_answer(request))

    @app.post("/api/v1/models/{model}/sample", response_model=s.ImagesResponse, tags=["operations"],
              responses={200: {"content": {PNG_TYPE: {}}}})
    async def sample(model: str, body: s.SampleRequest, request: Request):
        png_format(request, body)
        end = deadline()
        return await call("Sample", request, lambda: ops.sample(convert.sample_call(model, body, end)),
                          images_answer(request))

    @app.post("/api/v1/models/{model}/edit", response_model=s.ImagesResponse, tags=["operations"],
              responses={200: {"content": {PNG_TYPE: {}}}})
    async def edit(model: str, body: s.EditRequest, request: Request):
        png_format(request, body)
        return await call("Edit", request, lambda: ops.edit(convert.edit_call(model, body)), images_answer(request))

    @app.post("/api/v1/models/{model}/interpolate", response_model=s.InterpolateResponse, tags=["operations"])
    async def interpolate(model: str, body: s.InterpolateRequest, request: Request):
        end = deadline()
        return await call("Interpolate", request,
                          lambda: ops.interpolate(convert.interpolate_call(model, body, end)),
                          convert.interpolate_response)

    @app.post("/api/v1/augment", tags=["operations"],
              responses={200: {"content": {"application/x-ndjson": {}},
                               "description": "one JSON object per line: a batch of images"}})
    async def augment(body: s.AugmentRequest, request: Request):
        async def start() -> Any:
            return await ops.augment(convert.augment_call(body))

        run = await call("Augment", request, start, lambda r: r)
        if isinstance(run, Response):
            return run

        async def lines():
            try:
                async for b in run.batches:
                    yield json.dumps(convert.augment_batch(run, b)) + "\n"
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failure mid-stream ends it with an error line
                yield json.dumps(failure(exc, "Augment")[1]) + "\n"
            finally:
                await run.batches.aclose()
        return StreamingResponse(lines(), media_type="application/x-ndjson")

    # -- health and the page -------------------------------------------------------------------------------
    @app.get("/healthz", tags=["health"])
    async def healthz():
        """Open (probes carry no token); `auth` tells the page whether to ask for one before calling the API;
        `handles` whether issued handles survive a restart of the store (as ModelInfo.handle_store)."""
        return {"status": "SERVING", "auth": bool(config.frontend.api_token), "handles": ops.store.describe()}

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
