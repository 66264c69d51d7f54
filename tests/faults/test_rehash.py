"""A login's rehash (Argon2 parameters raised) is a conditional UPDATE: it stores the new hash
only while the row still holds the hash the login verified, so a password changed while the
login was verifying stays changed. On SQLite, PostgreSQL and MariaDB (`api`)."""

from __future__ import annotations

from sqlalchemy import text

from asyncblog.api.state import AppState
from tests.fixtures.app import Api
from tests.fixtures.databases import Backend, settings_for
from tests.fixtures.faults import ends_within, gated_client

OLD = "password123"
NEW = "changed-meanwhile"


async def test_a_rehash_does_not_undo_a_password_change_made_meanwhile(
    backend: Backend, api: Api
) -> None:
    """A login under raised Argon2 parameters is held in its verification (in its thread, on
    the hash it read); meanwhile the user changes the password; then the login goes on and
    succeeds (its password was right when it read the row) and rehashes. An unconditional
    UPDATE would store the OLD password's new hash: the new password would stop working and
    the old one would log in again."""
    user = await api.register(password=OLD)
    owner = await api.login(user["username"], OLD)
    stronger = settings_for(backend.url, argon2_time_cost=2)
    async with gated_client(AppState.build(stronger, api.state.db)) as (upgraded, hasher):
        form = {"username": user["username"], "password": OLD}
        login = await hasher.hold(upgraded.post("/auth/token", data=form))
        changed = await api.client.patch(
            f"/users/{user['id']}",
            json={"password": NEW, "current_password": OLD},
            headers=owner,
        )
        assert changed.status_code == 200, changed.text
        hasher.go.set()
        answer = await ends_within(login, "the login after its verification", 10)
        assert answer.status_code == 200, answer.text

    async with api.state.db.session() as session:
        stored = await session.scalar(
            text("SELECT hashed_password FROM users WHERE id = :id"), {"id": user["id"]}
        )
    assert ",t=2," not in stored, "the login's rehash replaced the changed password"
    await api.login(user["username"], NEW)  # asserts 200
    old = await api.client.post("/auth/token", data={"username": user["username"], "password": OLD})
    assert old.status_code == 401, old.text
