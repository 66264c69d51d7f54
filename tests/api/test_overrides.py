"""FastAPI's `app.dependency_overrides` reaches every route (they are added to the app's own
route list, not included as nested routers)."""

from __future__ import annotations

import httpx

from asyncblog.api.app import create_app
from asyncblog.api.deps import optional_user
from asyncblog.api.state import AppState
from asyncblog.services.auth import Caller
from tests.fixtures.app import Api


async def test_an_override_reaches_the_spliced_routes(api: Api, state: AppState) -> None:
    user = await api.register()
    app = create_app(state=state)

    async def an_admin() -> Caller:
        return Caller(id=0, is_admin=True)

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        anonymous = await client.get(f"/users/{user['id']}")
        assert anonymous.status_code == 200
        assert "email" not in anonymous.json()

        app.dependency_overrides[optional_user] = an_admin
        as_admin = await client.get(f"/users/{user['id']}")
        assert as_admin.status_code == 200
        assert as_admin.json()["email"] == user["email"]  # the private view: the override ran

        app.dependency_overrides.clear()
        again = await client.get(f"/users/{user['id']}")
        assert "email" not in again.json()
