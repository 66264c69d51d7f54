"""/docs in a real browser (Debian's chromium, headless, driven by Playwright) with every request
to anything but this service blocked: the page renders the operations, "Authorize" logs in with
the OAuth2 password flow, and "Try it out" on POST /posts answers 201 with the post; /redoc
renders too. No request tried to leave the host and the pages' CSP refused nothing.

A failure leaves a screenshot in the test's temp dir. `DOCS_SCREENSHOT=<path>` saves the rendered
page there too (the README's picture is made that way).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy.engine import make_url

from asyncblog import migrations
from tests.fixtures.databases import unavailable
from tests.fixtures.servers import ServerProcess, serving

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
PASSWORD = "password123"
TIMEOUT_MS = 30_000


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    """`asyncblog serve` on a new SQLite file, as a newcomer runs it, with one user."""
    url = make_url(f"sqlite+aiosqlite:///{tmp_path / 'docs.db'}")
    await asyncio.to_thread(migrations.upgrade, url)
    async with serving(url, tmp_path) as server:
        async with httpx.AsyncClient(base_url=server.base) as client:
            created = await client.post(
                "/users",
                json={"username": "reader", "email": "reader@example.com", "password": PASSWORD},
            )
            assert created.status_code == 201, created.text
        yield server


async def test_docs_work_offline_in_a_browser(server: ServerProcess, tmp_path: Path) -> None:
    if not os.path.exists(CHROMIUM):  # noqa: ASYNC240 (a stat, once)
        unavailable("chromium", f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.async_api import Route, async_playwright

    own = urlsplit(server.base).netloc
    blocked: list[str] = []
    console_errors: list[str] = []

    async def only_this_service(route: Route) -> None:
        if urlsplit(route.request.url).netloc == own:
            await route.continue_()
        else:
            blocked.append(route.request.url)
            await route.abort()

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(TIMEOUT_MS)
        await page.route("**/*", only_this_service)
        page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
        try:
            await page.goto(f"{server.base}/docs", wait_until="networkidle")
            # rendered, not blank: every operation of the API is on the page
            await page.wait_for_selector(".opblock")
            spec = (await (await page.request.get(f"{server.base}/openapi.json")).json())["paths"]
            operations = {op["operationId"] for methods in spec.values() for op in methods.values()}
            shown = await page.locator(".opblock").evaluate_all("els => els.map(e => e.id)")
            # ids are "operations-<tag>-<operationId>"
            assert {i.split("-", 2)[2] for i in shown} == operations
            if target := os.environ.get("DOCS_SCREENSHOT"):
                await page.screenshot(path=target)

            # Authorize: the OAuth2 password flow against POST /auth/token
            await page.click("button.authorize")
            await page.fill("#oauth_username", "reader")
            await page.fill("#oauth_password", PASSWORD)
            await page.click(".auth-btn-wrapper button.authorize")
            dialog = page.locator(".modal-ux")
            await dialog.get_by_text("Authorized", exact=True).wait_for()
            await dialog.get_by_role("button", name="Close").click()

            # Try it out: POST /posts
            operation = page.locator("#operations-posts-create_post_posts_post")
            await operation.locator(".opblock-summary").click()
            await operation.locator("button.try-out__btn").click()
            body = {"title": "From the docs", "content": "Written in Swagger UI, offline."}
            await operation.locator("textarea.body-param__text").fill(json.dumps(body))
            await operation.locator("button.execute").click()
            status = operation.locator(".live-responses-table tr.response .response-col_status")
            await status.wait_for()
            assert (await status.inner_text()).strip() == "201"
            answer = await operation.locator(".live-responses-table .microlight").first.inner_text()
            post = json.loads(answer)
            assert post["title"] == body["title"] and post["version"] == 1

            assert not [e for e in console_errors if "Content Security Policy" in e], console_errors

            # ReDoc renders the same description from the same host
            console_errors.clear()
            await page.goto(f"{server.base}/redoc", wait_until="networkidle")
            await page.get_by_role("heading", name="Create Post").first.wait_for()
        except BaseException:
            await page.screenshot(path=tmp_path / "docs-failure.png", full_page=True)
            raise
        finally:
            await browser.close()

    assert blocked == [], "the docs tried to leave the host"
    # ReDoc's sidebar credit shows a logo from cdn.redoc.ly: the page's policy refuses it (a
    # blank icon), and that is the one thing it refuses.
    refused = [e for e in console_errors if "Content Security Policy" in e]
    assert all("https://cdn.redoc.ly/" in e for e in refused), refused
    # the post is really there
    async with httpx.AsyncClient(base_url=server.base) as client:
        posts = (await client.get("/posts")).json()
    assert [p["title"] for p in posts] == [body["title"]]
