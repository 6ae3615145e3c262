"""The FastAPI application: routes, errors in TGI's or OpenAI's shape, API-key auth, metrics, lifespan.

`create_app(state)` builds it around a loaded model and an engine; the engine's thread starts with the
app's lifespan and stops after uvicorn has drained in-flight requests (graceful shutdown).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from contextlib import asynccontextmanager
from importlib import metadata
from typing import Any

from fastapi import Depends, FastAPI, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException

from tunebench.serve.guards import BodyLimitMiddleware, body_limit
from tunebench.serve.state import ServerState
from tunebench.serve.validate import ApiError

log = logging.getLogger("tunebench.serve")
ENGINE_COUNTED = ("timeout", "cancelled")  # the engine counts these itself


def version() -> str:
    try:
        return metadata.version("tunebench")
    except metadata.PackageNotFoundError:
        return "0"


def is_openai(path: str) -> bool:
    return path.startswith("/v1/")


def error_body(path: str, status: int, kind: str, message: str) -> dict[str, Any]:
    if is_openai(path):
        kind_name = "invalid_request_error" if status in (404, 413, 422) else kind
        return {"error": {"message": message, "type": kind_name, "param": None, "code": kind}}
    return {"error": message, "error_type": kind}


def validation_message(errors: list[dict[str, Any]]) -> str:
    """FastAPI's error list as one line: 'parameters.max_new_tokens: Input should be ... (got 0)'."""
    parts = []
    for err in errors[:5]:
        if err.get("type") == "json_invalid":
            parts.append(f"the request body is not valid JSON ({err.get('ctx', {}).get('error', 'cannot parse')})")
            continue
        where = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
        got = repr(err.get("input"))
        parts.append(f"{where}: {err.get('msg')}" + (f" (got {got[:80]})" if "input" in err else ""))
    return "; ".join(parts)


class MetricsMiddleware:
    """Counts requests by route and status and times them until the response's last byte (streams too)."""

    def __init__(self, app: Any, metrics: Any) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.monotonic()
        status = 500

        def send_and_watch(message: dict[str, Any]) -> Any:
            # A plain function handing back send's awaitable: no coroutine of its own for every chunk of a stream.
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            return send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            route = route_label(scope)
            self.metrics.requests.labels(route=route, status=str(status)).inc()
            self.metrics.request_latency.labels(route=route).observe(time.monotonic() - start)


def route_label(scope: dict[str, Any]) -> str:
    """The route template a request matched. FastAPI's own routes put themselves in the scope; Starlette's
    (/docs, /openapi.json, /redoc) do not, so those are matched again here instead of counting as unmatched."""
    route = scope.get("route")
    if route is not None:
        return getattr(route, "path", "unmatched")
    from starlette.routing import Match

    for candidate in getattr(scope.get("app"), "routes", ()):
        if candidate.matches(scope)[0] == Match.FULL:
            return getattr(candidate, "path", "unmatched")
    return "unmatched"


def api_key_dependency(expected: str) -> Any:
    bearer = HTTPBearer(auto_error=False, description="the server's API key (--api-key / TUNEBENCH_API_KEY)")
    wanted = expected.encode()

    async def require_api_key(credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> None:
        given = (credentials.credentials if credentials else "").encode()
        if not hmac.compare_digest(given, wanted):  # constant time: no timing hint about the key
            raise ApiError(401, "auth", "missing or wrong API key: send 'Authorization: Bearer <key>'",
                           {"WWW-Authenticate": "Bearer"})

    return require_api_key


def info(state: ServerState) -> dict[str, Any]:
    served, limits, engine = state.served, state.builder.limits, state.engine
    task = served.task
    return {
        "model_id": served.merged or served.model_id, "base_model_id": served.model_id, "model_sha": None,
        "model_dtype": served.dtype, "model_device_type": served.device.split(":")[0],
        "model_pipeline_tag": "text-generation", "engine": engine.kind,
        "max_concurrent_requests": getattr(engine, "total_capacity", engine.capacity), "max_batch_size": engine.slots,
        "max_queue": engine.limits.max_queue,
        "max_best_of": 1, "max_stop_sequences": limits.max_stop_sequences,
        "max_input_tokens": limits.max_input_tokens, "max_input_length": limits.max_input_tokens,
        "max_body_bytes": body_limit(limits.max_input_tokens),
        "max_new_tokens": limits.max_new_tokens, "max_total_tokens": limits.context_length,
        "request_timeout_s": engine.limits.request_timeout, "validation_workers": 1, "max_client_batch_size": 16,
        "adapters": list(served.adapters), "default_adapter": served.default_adapter,
        "merged_adapter": served.merged, "chat_template": served.has_chat_template,
        "task": {"task": task.task, "labels": task.labels} if task else None,
        "frontend": state.options.frontend, "frontends": state.options.frontends,
        "frontend_index": state.frontend_index,
        "router": "tunebench", "version": version(), "sha": None, "docker_label": None,
    }


def create_app(state: ServerState) -> Any:
    from tunebench.serve import openai_api, tasks_api, tgi_api

    @asynccontextmanager
    async def lifespan(_app: Any) -> Any:
        engine = state.engine
        split = hasattr(engine, "start_async")  # the engine in a process of its own (tunebench.serve.client)
        if split:
            await engine.start_async(asyncio.get_running_loop())
        else:
            engine.start(asyncio.get_running_loop())
        yield
        await (engine.stop_async() if split else asyncio.to_thread(engine.stop))

    # With an API key the schema and its pages need it too (they list the adapters and the routes): added below.
    keyed = bool(state.options.api_key)
    pages = {"docs_url": None, "redoc_url": None, "openapi_url": None} if keyed else {}
    app = FastAPI(title="tunebench server", version=version(), lifespan=lifespan, **pages,
                  description="TGI- and OpenAI-compatible text generation with continuous batching, per-request "
                              "LoRA adapters, and a fine-tuned run's task endpoints.")

    def refuse(path: str, status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> Any:
        if kind not in ENGINE_COUNTED:
            state.metrics.error(kind)
        return JSONResponse(error_body(path, status, kind, message), status, headers=headers)

    def reply(request: Request, status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> Any:
        return refuse(request.url.path, status, kind, message, headers)

    # Added first so that it runs inside the metrics middleware: its refusals are counted too.
    max_tokens = state.builder.limits.max_input_tokens
    app.add_middleware(BodyLimitMiddleware, limit=body_limit(max_tokens), max_input_tokens=max_tokens,
                       refuse=refuse)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, err: ApiError) -> Any:
        return reply(request, err.status, err.kind, err.message, err.headers)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, err: RequestValidationError) -> Any:
        return reply(request, 422, "validation", validation_message(list(err.errors())))

    @app.exception_handler(HTTPException)
    async def on_http_error(request: Request, err: HTTPException) -> Any:
        kind = {404: "not_found", 405: "not_found", 413: "too_large"}.get(err.status_code, "validation")
        return reply(request, err.status_code, kind, str(err.detail), getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def on_bug(request: Request, err: Exception) -> Any:
        log.exception("unhandled error on %s", request.url.path)
        return reply(request, 500, "internal", f"internal error: {type(err).__name__}")

    auth = [Depends(api_key_dependency(state.options.api_key))] if state.options.api_key else []

    @app.get("/health", tags=["server"], summary="200 when the engine is running (no API key needed)")
    async def health() -> Any:
        if not state.engine.alive:
            reason = getattr(state.engine, "gone", None)  # the split front end says why
            return JSONResponse({"status": "engine stopped", **({"reason": reason} if reason else {})}, 503)
        return {"status": "ok", "engine": state.engine.kind}

    @app.get("/info", tags=["server"], summary="Model, engine, limits and adapters", dependencies=auth)
    async def get_info() -> dict[str, Any]:
        return info(state)

    @app.get("/metrics", tags=["server"], summary="Prometheus metrics", dependencies=auth)
    async def metrics() -> Any:
        body, content_type = state.metrics.render()
        return Response(body, media_type=content_type)

    app.include_router(tgi_api.router(state, auth))
    app.include_router(openai_api.router(state, auth))
    app.include_router(tasks_api.router(state, auth))
    if keyed:
        protected_pages(app, auth)
    return app


def protected_pages(app: Any, auth: list[Any]) -> None:
    """/openapi.json, /docs and /redoc behind the API key (FastAPI's own routes would be open to anyone)."""
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html

    @app.get("/openapi.json", include_in_schema=False, dependencies=auth)
    async def openapi() -> Any:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=auth)
    async def docs() -> Any:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - docs")

    @app.get("/redoc", include_in_schema=False, dependencies=auth)
    async def redoc() -> Any:
        return get_redoc_html(openapi_url="/openapi.json", title=f"{app.title} - ReDoc")


def build_state(served: Any, options: Any) -> ServerState:
    """The engine, metrics and request limits around a model loaded in this process (`frontend: inline`; the
    split front end's state is `tunebench.serve.client.build_split_state`)."""
    from tunebench.serve.engine import create_engine
    from tunebench.serve.metrics import ServeMetrics
    from tunebench.serve.options import engine_limits
    from tunebench.serve.validate import Limits, RequestBuilder

    metrics = ServeMetrics(options.engine)
    engine = create_engine(options.engine, served, engine_limits(options), metrics)
    return ServerState(served, engine, metrics, options, RequestBuilder(served, Limits.of(served, options)))
