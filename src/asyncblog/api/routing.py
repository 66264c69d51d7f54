"""The routers of the service, made one way, and the route class they all use.

FastAPI resolves a route's parameters and dependencies on every request with generic machinery:
two exit stacks, its telemetry hooks, the endpoint's context for error messages, the dependency
tree walked with each parameter's annotation inspected again. Measured with wrk on
`GET /posts/{id}` (one worker, 64 connections), that machinery was a quarter to a third of the
server's CPU per request on PostgreSQL and on SQLite. `PlannedRoute` resolves what a route
declares from a plan made once, when the route is created, with the same pydantic validators
FastAPI uses, and hands every request it cannot plan for to FastAPI's own handler, unchanged:
a parameter that does not validate (so every 422 is FastAPI's), a body that is not plain JSON,
`app.dependency_overrides` set, FastAPI's telemetry on (`TELEMETRY=true`), and any route with
something the plan does not cover (a dependency with `yield`, a sync one, form data, cookies,
`Response` or `BackgroundTasks` parameters, OAuth scopes, an endpoint not returning a
`Response`).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from copy import deepcopy
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, FastAPI, params
from fastapi._compat import field_annotation_is_sequence
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from pydantic import BaseModel, Json
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from asyncblog.api.middleware import ExceptionHandlers
from asyncblog.api.overrides import OVERRIDES, current_app
from asyncblog.api.responses import COMMON_RESPONSES

PLANNED = "asyncblog_planned_routes"


def plan_requests(app: Any, planned: bool) -> None:
    """Whether `app`'s requests may take the planned handlers (`create_app`: unless FastAPI's
    telemetry is on); with False, FastAPI's handler answers every request."""
    setattr(app, PLANNED, planned)


def plans_requests(app: Any) -> bool:
    return bool(getattr(app, PLANNED, False))


def service_router(**options: Any) -> APIRouter:
    """A router with the common error answers, whose routes `app.dependency_overrides` reaches
    (through `api.overrides`: `app.add_routes` puts them in the app's own list) and whose
    parameters are resolved from a plan (`PlannedRoute`)."""
    return APIRouter(
        responses=COMMON_RESPONSES,
        dependency_overrides_provider=OVERRIDES,
        route_class=PlannedRoute,
        **options,
    )


class PlannedRoute(APIRoute):
    """An `APIRoute` whose requests are resolved from a plan where it has one (see the module)."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        fastapi_app = _fastapi_handler(self.app)
        plan = _plan(self.dependant, self.body_field, endpoint)
        self.app = fastapi_app if plan is None else _planned_app(plan, fastapi_app)
        self._literal = self.path_format.partition("{")[0]  # what every path it takes starts with

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        """No match for a path that does not start as this route's path does, without FastAPI's
        and Starlette's matching: the router tries each route in turn, and every route before
        the one that takes a request cost it about 1.3 us (a regular expression and FastAPI's
        look-ups in the scope). FastAPI matches as usual where it has its own state in the
        scope (`scope["fastapi"]`: an included router's prefix) or the app is mounted under a
        root path."""
        if (
            scope["type"] == "http"
            and not scope["path"].startswith(self._literal)
            and FASTAPI_STATE not in scope
            and not scope.get("root_path")
        ):
            return Match.NONE, {}
        return super().matches(scope)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The route's app, one coroutine level below the router (FastAPI's and Starlette's
        `handle` are two, passed on every suspension of the request); FastAPI's `handle` where
        it has its own state in the scope or the method is not the route's (a 405)."""
        if FASTAPI_STATE in scope or (self.methods and scope["method"] not in self.methods):
            await super().handle(scope, receive, send)
            return
        await self.app(scope, receive, send)


FILE_STACK = "fastapi_middleware_astack"
FASTAPI_STATE = "fastapi"  # FastAPI's own per-request state in the scope (an included router)


def _fastapi_handler(handler: ASGIApp) -> ASGIApp:
    """FastAPI's own handler of a route, with what it needs from the layers of the app's stack
    that `middleware_stack` leaves out because a planned request needs neither: the exit stack
    on which it closes a request's files (FastAPI's `AsyncExitStackMiddleware` opens one for
    every request), and the app whose `dependency_overrides` apply (`api.overrides`)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        current_app.set(scope.get("app"))
        if FILE_STACK in scope:
            await handler(scope, receive, send)
            return
        async with AsyncExitStack() as stack:
            scope[FILE_STACK] = stack
            await handler(scope, receive, send)

    return app


def _served_without_fastapi_layers(route: BaseRoute) -> bool:
    """A `PlannedRoute`, a plain Starlette route (/openapi.json, /metrics) or a mount of files
    (the docs' assets); not another `APIRoute`, nor a nested router."""
    if isinstance(route, Mount):
        return getattr(route.app, "routes", None) is None
    return type(route) in (PlannedRoute, Route)


def middleware_stack(app: FastAPI) -> ASGIApp:
    """The ASGI layers in front of the router: the app's own middleware, then the exception
    handlers (`api.middleware.ExceptionHandlers`), and nothing else.

    FastAPI adds four more layers to every request: Starlette's last-resort 500 (the service's
    `RequestContextMiddleware` answers it), its telemetry's exception hook, its body size limit
    (unset; the service has its own) and an exit stack for files (`_fastapi_handler` opens it
    where FastAPI's handler runs). Measured on `GET /posts/{id}` in process (callgrind), they
    were 26 of the 316 thousand instructions a request cost. FastAPI's stack is kept wherever
    one of them has work: its telemetry on, a 500 handler, a body limit, debug, or a route
    whose handler is not a `PlannedRoute`'s."""
    handlers = app.exception_handlers
    if (
        not plans_requests(app)
        or app.debug
        or app.max_body_size is not None
        or 500 in handlers
        or Exception in handlers
        or not all(_served_without_fastapi_layers(route) for route in app.router.routes)
    ):
        return FastAPI.build_middleware_stack(app)
    # The router's own stack, without its `__call__` (a coroutine level on every suspension).
    router: ASGIApp = app.router.middleware_stack
    stack: ASGIApp = ExceptionHandlers(router, handlers=handlers, debug=app.debug)
    for middleware in reversed(app.user_middleware):
        stack = middleware.cls(stack, *middleware.args, **middleware.kwargs)
    return stack


@dataclass(frozen=True, slots=True)
class _Param:
    """A path, query or header parameter: where to find it and the field that validates it."""

    name: str
    where: str  # "path", "query" or "header"
    key: str
    field: Any  # FastAPI's ModelField
    required: bool
    default: Any
    validate_default: bool


@dataclass(frozen=True, slots=True)
class _Step:
    """One call of the tree, in the order FastAPI makes them (dependencies first)."""

    call: Callable[..., Awaitable[Any]]
    params: tuple[_Param, ...]
    children: tuple[tuple[int, str | None], ...]  # (step index, argument name)
    request_names: tuple[str, ...]
    use_cache: bool


@dataclass(frozen=True, slots=True)
class _Plan:
    steps: tuple[_Step, ...]  # the endpoint last
    body_name: str | None
    body_field: Any


class _Unplannable(Exception):
    pass


def _plan(dependant: Dependant, body_field: Any, endpoint: Callable[..., Any]) -> _Plan | None:
    try:
        returns = inspect.signature(endpoint, eval_str=True).return_annotation
    except (NameError, TypeError, ValueError):
        return None
    if not (inspect.isclass(returns) and issubclass(returns, Response)):
        return None
    steps: list[_Step] = []
    try:
        _add_steps(dependant, steps)
        body_name = _body_name(dependant, body_field)
    except _Unplannable:
        return None
    return _Plan(tuple(steps), body_name, body_field if body_name else None)


def _add_steps(dependant: Dependant, steps: list[_Step], *, root: bool = True) -> int:
    if (
        dependant.cookie_params
        or dependant.response_param_name
        or dependant.background_tasks_param_name
        or dependant.security_scopes_param_name
        or dependant.websocket_param_name
        or dependant.own_oauth_scopes
        or dependant.parent_oauth_scopes
        or dependant.concurrency is not None
        or not _is_async_function(dependant.call)
        or (dependant.body_params and not root)  # a body that a dependency declares
    ):
        raise _Unplannable
    children = tuple(
        (_add_steps(sub, steps, root=False), sub.name) for sub in dependant.dependencies
    )
    leaves = [
        *(_param(f, "path") for f in dependant.path_params),
        *(_param(f, "query") for f in dependant.query_params),
        *(_param(f, "header") for f in dependant.header_params),
    ]
    names = (dependant.request_param_name, dependant.http_connection_param_name)
    assert dependant.call is not None
    steps.append(
        _Step(
            call=dependant.call,
            params=tuple(leaves),
            children=children,
            request_names=tuple(name for name in names if name),
            use_cache=dependant.use_cache,
        )
    )
    return len(steps) - 1


def _is_async_function(call: Any) -> bool:
    if call is None or inspect.isclass(call):
        return False
    if inspect.isasyncgenfunction(call) or inspect.isgeneratorfunction(call):
        return False
    if inspect.iscoroutinefunction(call):
        return True
    return inspect.iscoroutinefunction(getattr(call, "__call__", None))  # noqa: B004


def _param(field: Any, where: str) -> _Param:
    """A scalar parameter found under its own name (a header's with `-` for `_`): FastAPI may
    look an aliased one up under more than one key."""
    info = field.field_info
    annotation = info.annotation
    own_key = field.name.replace("_", "-") if where == "header" else field.name
    if (
        info.validation_alias is not None
        or field.alias != own_key
        or any(type(item) is Json for item in info.metadata)
        or (inspect.isclass(annotation) and issubclass(annotation, BaseModel))
        or field_annotation_is_sequence(annotation)
    ):
        raise _Unplannable
    return _Param(
        name=field.name,
        where=where,
        key=field.alias,
        field=field,
        required=info.is_required(),
        default=field.default,
        validate_default=bool(info.validate_default),
    )


def _body_name(dependant: Dependant, body_field: Any) -> str | None:
    """The endpoint's one JSON body parameter (a pydantic model, not embedded), if any."""
    if not dependant.body_params:
        return None
    if len(dependant.body_params) != 1 or body_field is None:
        raise _Unplannable
    field = dependant.body_params[0]
    info = field.field_info
    annotation = info.annotation
    if (
        isinstance(info, params.Form)
        or not isinstance(info, params.Body)
        or info.embed
        or not (inspect.isclass(annotation) and issubclass(annotation, BaseModel))
    ):
        raise _Unplannable
    return str(field.name)


_MISSING = object()


def _planned_app(plan: _Plan, fastapi_app: ASGIApp) -> ASGIApp:
    """The route's ASGI app: the plan where it applies, else FastAPI's (`fastapi_app`)."""
    steps = plan.steps
    last = len(steps) - 1
    body_name = plan.body_name

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        owner = scope.get("app")
        if owner is None or owner.dependency_overrides or not getattr(owner, PLANNED, False):
            await fastapi_app(scope, receive, send)
            return
        request = Request(scope, receive, send)
        arguments = _validated(request, steps)
        body: bytes | None = None
        if arguments is not None and body_name is not None:
            body = await _body(request)
            value = _validated_body(request, body, plan.body_field)
            if value is _MISSING:
                arguments = None
            else:
                arguments[last][body_name] = value
        if arguments is None:  # FastAPI answers it (a 422, a 400, ...)
            await fastapi_app(scope, receive if body is None else _replay(body, receive), send)
            return
        results: list[Any] = [None] * len(steps)
        cache: dict[int, Any] = {}
        for index, step in enumerate(steps):
            values = arguments[index]
            for child, name in step.children:
                if name is not None:
                    values[name] = results[child]
            for name in step.request_names:
                values[name] = request
            key = id(step.call)
            if step.use_cache and key in cache:
                results[index] = cache[key]
                continue
            results[index] = await step.call(**values)
            cache.setdefault(key, results[index])
        response = results[last]
        if not isinstance(response, Response):
            raise TypeError(f"{scope['path']}: the endpoint returned no Response")
        await response(scope, receive, send)

    return app


def _validated(request: Request, steps: Sequence[_Step]) -> list[dict[str, Any]] | None:
    """Every step's parameters, validated as FastAPI would; None when one does not validate."""
    arguments: list[dict[str, Any]] = []
    for step in steps:
        values: dict[str, Any] = {}
        for param in step.params:
            if param.where == "path":
                raw = request.path_params.get(param.key)
            elif param.where == "query":
                raw = request.query_params.get(param.key)
            else:
                raw = request.headers.get(param.key)
            if raw is None:
                if param.required:
                    return None
                value = deepcopy(param.default)
                if param.validate_default:
                    value, errors = param.field.validate(value, values, loc=(param.where,))
                    if errors:
                        return None
            else:
                value, errors = param.field.validate(raw, values, loc=(param.where, param.key))
                if errors:
                    return None
            values[param.name] = value
        arguments.append(values)
    return arguments


async def _body(request: Request) -> bytes:
    """The body, read as FastAPI reads it (an HTTPException, like a 413, goes on as is)."""
    try:
        return await request.body()
    except HTTPException:
        raise
    except Exception as exc:
        raise HTTPException(400, "There was an error parsing the body") from exc


def _validated_body(request: Request, body: bytes, field: Any) -> Any:
    """The JSON body validated by its field; `_MISSING` for anything FastAPI should answer."""
    content_type = request.headers.get("content-type")
    if not body or content_type is None:
        return _MISSING
    if content_type.partition(";")[0].strip().lower() != "application/json":
        return _MISSING
    try:
        document = json.loads(body)
    except Exception:  # not JSON, too deeply nested, ...: FastAPI's answer
        return _MISSING
    value, errors = field.validate(document, {}, loc=("body",))
    return _MISSING if errors else value


def _replay(body: bytes, receive: Receive) -> Receive:
    """`receive` that first gives back the body already read."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
