"""The docs pages and their assets, over HTTP: everything from this service, cacheable, under a
policy as strict as the pages allow. (The same pages in a real browser: test_docs_browser.py.)"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import AsyncIterator
from importlib import metadata

import httpx
import pytest

from asyncblog.api.app import create_app
from asyncblog.api.docs import ASSETS_URL
from tests.fixtures.databases import settings_for

ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """The app without a database: the docs pages and assets never reach one."""
    app = create_app(settings_for("sqlite+aiosqlite:///:memory:"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


def referenced(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', html) + re.findall(r"url: '([^']+)'", html)


def policy(response: httpx.Response) -> dict[str, list[str]]:
    directives = response.headers["content-security-policy"].split(";")
    return {d.split()[0]: d.split()[1:] for d in (x.strip() for x in directives) if d}


@pytest.mark.parametrize("page", ["/docs", "/redoc", "/docs/oauth2-redirect"])
async def test_pages_load_nothing_from_another_host(client: httpx.AsyncClient, page: str) -> None:
    response = await client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    for url in referenced(response.text):
        assert url.startswith("/"), url
    assert "cdn.jsdelivr" not in response.text and "tiangolo" not in response.text
    assert "fonts.googleapis" not in response.text


async def test_swagger_ui_page_policy_allows_only_its_own_script(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/docs")
    csp = policy(response)
    assert csp["default-src"] == ["'none'"]
    assert csp["frame-ancestors"] == ["'none'"]
    assert csp["connect-src"] == ["'self'"]
    inline = re.findall(r"<script>(.*?)</script>", response.text, re.S)
    assert len(inline) == 1
    digest = base64.b64encode(hashlib.sha256(inline[0].encode()).digest()).decode()
    assert csp["script-src"] == ["'self'", f"'sha256-{digest}'"]
    assert "'unsafe-inline'" not in csp["script-src"] and "'unsafe-eval'" not in csp["script-src"]
    assert '"validatorUrl": null' in response.text  # no badge fetched from swagger.io


# The pages' inline scripts: Swagger UI's set-up and its OAuth2 redirect; ReDoc has none.
INLINE_SCRIPTS = {"/docs": 1, "/redoc": 0, "/docs/oauth2-redirect": 1}


@pytest.mark.parametrize("page", sorted(INLINE_SCRIPTS))
async def test_each_page_has_its_own_policy(client: httpx.AsyncClient, page: str) -> None:
    """Every docs page's Content-Security-Policy over HTTP, directive by directive: scripts
    from the service plus exactly the page's own inline scripts by their SHA-256, styles from
    the service and inline, images from the service or `data:`, `connect-src 'self'`, no
    framing; `worker-src blob:` on ReDoc's page only (its search), nothing else for workers."""
    response = await client.get(page)
    assert response.status_code == 200
    csp = policy(response)
    inline = re.findall(r"<script>(.*?)</script>", response.text, re.S)
    assert len(inline) == INLINE_SCRIPTS[page], inline
    hashes = [
        f"'sha256-{base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()}'"
        for body in inline
    ]
    assert csp["default-src"] == ["'none'"]
    assert csp["script-src"] == ["'self'", *hashes]
    assert csp["style-src"] == ["'self'", "'unsafe-inline'"]
    assert csp["img-src"] == ["'self'", "data:"]
    assert csp["connect-src"] == ["'self'"]
    assert csp["frame-ancestors"] == ["'none'"]
    if page == "/redoc":
        assert csp["worker-src"] == ["blob:"]
    else:
        assert "worker-src" not in csp, csp


async def test_api_routes_keep_the_strict_api_policy(client: httpx.AsyncClient) -> None:
    response = await client.get("/users/not-a-number")
    assert response.status_code == 422
    assert response.headers["content-security-policy"] == (
        "default-src 'none'; frame-ancestors 'none'"
    )


@pytest.mark.parametrize("name", ASSETS)
async def test_assets_are_served_and_cached(client: httpx.AsyncClient, name: str) -> None:
    response = await client.get(f"{ASSETS_URL}/{name}")
    assert response.status_code == 200
    assert len(response.content) > 1000
    assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
    etag = response.headers["etag"]
    again = await client.get(f"{ASSETS_URL}/{name}", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""


async def test_the_assets_url_names_the_package_version(client: httpx.AsyncClient) -> None:
    """The assets live under `/docs/assets/<fastapi-offline's version>/`, and both pages load
    every script, style and icon from there: a new release is a new URL, which is what makes
    the year-long `immutable` caching safe. (`test_assets_are_served_and_cached` takes the URL
    from the code, so it would pass with a URL that names no version.)"""
    version = metadata.version("fastapi-offline")
    assert f"/docs/assets/{version}" == ASSETS_URL
    expected = {
        "/docs": {"swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"},
        "/redoc": {"redoc.standalone.js", "favicon.png"},
    }
    for page, names in expected.items():
        html = (await client.get(page)).text
        assets = {url for url in referenced(html) if url != "/openapi.json"}
        assert assets == {f"/docs/assets/{version}/{name}" for name in names}, page
        for url in assets:
            assert (await client.get(url)).status_code == 200, url


async def test_the_bundled_swagger_ui_renders_openapi_3_1(client: httpx.AsyncClient) -> None:
    """Swagger UI 4 cannot render the OpenAPI 3.1 FastAPI publishes: the bundle must be 5."""
    spec = (await client.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.1")
    bundle = (await client.get(f"{ASSETS_URL}/swagger-ui-bundle.js")).text
    versions = re.findall(r'PACKAGE_VERSION:"(\d+)\.\d+\.\d+"', bundle)
    assert versions and int(versions[0]) >= 5, versions


async def test_unknown_asset_is_404(client: httpx.AsyncClient) -> None:
    assert (await client.get(f"{ASSETS_URL}/nothing.js")).status_code == 404
