from __future__ import annotations

from tests.fixtures.app import Api


async def test_register_login_me(api: Api) -> None:
    user, headers = await api.user()
    response = await api.client.get("/users/me", headers=headers)
    assert response.status_code == 200
    assert response.json()["id"] == user["id"]
    assert response.json()["balance"] == "0.00"


async def test_isolation_each_test_starts_empty(api: Api) -> None:
    response = await api.client.get("/users/count")
    assert response.json() == {"count": 0}
    await api.register()
    assert (await api.client.get("/users/count")).json() == {"count": 1}
