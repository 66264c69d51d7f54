"""The interactive docs, /docs (Swagger UI) and /redoc (ReDoc), served whole by this service.

FastAPI's default pages load Swagger UI and ReDoc from a public CDN and the favicon from
fastapi's site: on a machine without internet they stay blank. The assets come from the
`fastapi-offline` package instead (Swagger UI 5, which renders the OpenAPI 3.1 that FastAPI
publishes; ReDoc 2; see the README for why this package), under a path that carries the
package's version, so browsers may keep them for a year (`immutable`) and a new release is a new
URL; Starlette's static files answer `ETag` / `If-None-Match` too.

Each page has its own Content-Security-Policy, as strict as the page allows: nothing from
another origin, scripts only from here plus the page's own inline script by its hash, styles
inline (both UIs set style attributes), images from here or `data:` (the UIs' icons).
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib import metadata, resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
ASSETS_VERSION = metadata.version("fastapi-offline")
ASSETS_URL = f"/docs/assets/{ASSETS_VERSION}"

_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)


class _Assets(StaticFiles):
    """The UIs' scripts, styles and icon: cacheable for good, as their URL names the version."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        if response.status_code in (200, 304):
            response.headers["cache-control"] = "public, max-age=31536000, immutable"
        return response


def _script_hashes(html: str) -> str:
    return " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"
        for body in _INLINE_SCRIPT.findall(html)
    )


def _page(response: HTMLResponse, *, workers: bool = False) -> HTMLResponse:
    """The page with its policy: its own inline scripts allowed by their hashes."""
    html = bytes(response.body).decode()
    policy = [
        "default-src 'none'",
        f"script-src 'self' {_script_hashes(html)}".strip(),
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self' data:",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'none'",
    ]
    if workers:  # ReDoc's search runs in a worker built from a blob
        policy.append("worker-src blob:")
    response.headers["content-security-policy"] = "; ".join(policy)
    response.headers["cache-control"] = "no-cache"
    return response


def install_docs(app: FastAPI, **swagger_ui_parameters: Any) -> None:
    """Add /docs, its OAuth2 redirect page, /redoc and the assets (the app is built with
    `docs_url=None, redoc_url=None`)."""
    assets = resources.files("fastapi_offline") / "static"
    app.mount(ASSETS_URL, _Assets(directory=str(assets)), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"
    parameters = {"validatorUrl": None, **swagger_ui_parameters}

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return _page(
            get_swagger_ui_html(
                openapi_url=root + openapi_url,
                title=f"{app.title} - Swagger UI",
                oauth2_redirect_url=root + OAUTH2_REDIRECT_URL,
                swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
                swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
                swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
                swagger_ui_parameters=parameters,
            )
        )

    @app.get(OAUTH2_REDIRECT_URL, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return _page(get_swagger_ui_oauth2_redirect_html())

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return _page(
            get_redoc_html(
                openapi_url=root + openapi_url,
                title=f"{app.title} - ReDoc",
                redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
                redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
                with_google_fonts=False,
            ),
            workers=True,
        )
