"""The demo schema and its RLS policies behave as the seed document promises, directly against
PostgreSQL (no proxy): we do by hand, per transaction, what the proxy will do for every client:

    select set_config('role', <role>, true), set_config('request.jwt.claims', <claims json>, true)

logged in as ``authenticator`` (LOGIN NOINHERIT, member of anon and authenticated).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from rlsproxy.devcluster import (
    ALICE,
    AUTHENTICATOR_PASSWORD,
    BOB,
    MD5_PASSWORD,
    SERVICE_LOGIN_PASSWORD,
    DevCluster,
)

pytestmark = pytest.mark.integration

SET_CONTEXT = "select set_config('role', %s, true), set_config('request.jwt.claims', %s, true)"

ALICE_CLAIMS = {"sub": ALICE, "role": "authenticated", "email": "alice@example.com"}
BOB_CLAIMS = {"sub": BOB, "role": "authenticated", "email": "bob@example.com"}
ANON_CLAIMS = {"role": "anon"}

ALL_TITLES = {"alice private", "alice public", "bob private", "bob public"}
PUBLIC_TITLES = {"alice public", "bob public"}


def connect(
    pg: DevCluster, user: str = "authenticator", password: str = AUTHENTICATOR_PASSWORD
) -> psycopg.Connection[Any]:
    return psycopg.connect(pg.dsn(user=user, password=password), autocommit=True, connect_timeout=10)


@pytest.fixture
def conn(pg: DevCluster) -> Iterator[psycopg.Connection[Any]]:
    with connect(pg) as c:
        yield c


def set_context(conn: psycopg.Connection[Any], role: str, claims: dict[str, Any]) -> None:
    conn.execute(SET_CONTEXT, (role, json.dumps(claims)))


def titles(conn: psycopg.Connection[Any]) -> set[str]:
    return {row[0] for row in conn.execute("select title from notes").fetchall()}


def current_user(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("select current_user").fetchone()
    assert row is not None
    return str(row[0])


# --- the cluster itself ------------------------------------------------------------------------


def test_roles_are_as_designed(pg: DevCluster) -> None:
    out = pg.psql(
        "select rolname, rolcanlogin, rolinherit, rolsuper, rolbypassrls from pg_roles "
        "where rolname in ('anon', 'authenticated', 'service_role', 'authenticator', "
        "'authenticator_md5', 'rlsproxy_service') order by rolname"
    )
    rows = {line.split("|")[0]: line.split("|")[1:] for line in out.splitlines()}
    #                     login inherit super bypassrls
    assert rows["anon"][0] == "f" and rows["anon"][3] == "f"
    assert rows["authenticated"][0] == "f" and rows["authenticated"][3] == "f"
    assert rows["service_role"][0] == "f" and rows["service_role"][3] == "t"
    for login in ("authenticator", "authenticator_md5", "rlsproxy_service"):
        assert rows[login] == ["t", "f", "f", "f"], login


def test_five_policies_and_rls_enabled(pg: DevCluster) -> None:
    assert pg.psql("select relrowsecurity from pg_class where oid = 'public.notes'::regclass").strip() == "t"
    policies = pg.psql(
        "select policyname || ':' || cmd from pg_policies where tablename = 'notes'"
    ).splitlines()
    assert sorted(policies) == sorted(
        [
            "Read public notes:SELECT",
            "Read own notes:SELECT",
            "Create own notes:INSERT",
            "Update own notes:UPDATE",
            "Delete own notes:DELETE",
        ]
    )


def test_version_is_reported(pg: DevCluster) -> None:
    assert pg.version() >= 13  # gen_random_uuid() in core


# --- what each identity sees -------------------------------------------------------------------


def test_alice_sees_her_notes_and_public_ones(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        set_context(conn, "authenticated", ALICE_CLAIMS)
        assert current_user(conn) == "authenticated"
        assert titles(conn) == {"alice private", "alice public", "bob public"}
        row = conn.execute("select auth.uid(), auth.role(), auth.jwt() ->> 'email'").fetchone()
        assert row is not None
        assert str(row[0]) == ALICE
        assert row[1] == "authenticated"
        assert row[2] == "alice@example.com"


def test_bob_sees_his_notes_and_public_ones(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        set_context(conn, "authenticated", BOB_CLAIMS)
        assert titles(conn) == {"bob private", "bob public", "alice public"}


def test_anon_sees_only_public_notes(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        set_context(conn, "anon", ANON_CLAIMS)
        assert current_user(conn) == "anon"
        assert titles(conn) == PUBLIC_TITLES
        row = conn.execute("select auth.uid(), auth.role()").fetchone()
        assert row == (None, "anon")


def test_anon_cannot_write(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
        set_context(conn, "anon", ANON_CLAIMS)
        conn.execute("insert into notes (user_id, title) values (%s, 'anon note')", (ALICE,))


def test_authenticator_without_context_fails_closed(conn: psycopg.Connection[Any]) -> None:
    """The login role itself holds no privileges (NOINHERIT): a transaction the proxy forgot to
    switch is denied outright instead of seeing rows."""
    assert current_user(conn) == "authenticator"
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as excinfo:
        conn.execute("select * from notes")
    assert excinfo.value.sqlstate == "42501"


def test_authenticator_cannot_become_service_role(conn: psycopg.Connection[Any]) -> None:
    """Membership limits which roles set_config('role') may pick: not service_role."""
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as excinfo, conn.transaction():
        set_context(conn, "service_role", {"role": "service_role"})
    assert excinfo.value.sqlstate == "42501"


# --- writes ------------------------------------------------------------------------------------


def test_alice_cannot_insert_a_note_as_bob(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as excinfo, conn.transaction():
        set_context(conn, "authenticated", ALICE_CLAIMS)
        conn.execute("insert into notes (user_id, title) values (%s, 'forged')", (BOB,))
    assert excinfo.value.sqlstate == "42501"
    assert "row-level security" in str(excinfo.value)


def test_alice_can_insert_her_own_note(conn: psycopg.Connection[Any]) -> None:
    tx = conn.transaction(force_rollback=True)
    with tx:
        set_context(conn, "authenticated", ALICE_CLAIMS)
        cur = conn.execute(
            "insert into notes (user_id, title) values (%s, 'new') returning user_id", (ALICE,)
        )
        row = cur.fetchone()
        assert row is not None and str(row[0]) == ALICE


def test_alice_cannot_update_or_delete_bobs_notes(pg: DevCluster, conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        set_context(conn, "authenticated", ALICE_CLAIMS)
        # bob's public note is visible to alice, but not a target for UPDATE/DELETE (USING)
        cur = conn.execute("update notes set title = 'pwned' where user_id = %s", (BOB,))
        assert cur.rowcount == 0
        cur = conn.execute("delete from notes where user_id = %s", (BOB,))
        assert cur.rowcount == 0
    assert pg.psql(f"select title from notes where user_id = '{BOB}' order by title").split("\n")[:2] == [
        "bob private",
        "bob public",
    ]


def test_alice_cannot_give_her_note_to_bob(conn: psycopg.Connection[Any]) -> None:
    """UPDATE ... WITH CHECK: the new row must still belong to alice."""
    with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
        set_context(conn, "authenticated", ALICE_CLAIMS)
        conn.execute("update notes set user_id = %s where title = 'alice private'", (BOB,))


# --- transaction scoping -----------------------------------------------------------------------


def test_context_ends_with_the_transaction(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        set_context(conn, "authenticated", ALICE_CLAIMS)
        assert current_user(conn) == "authenticated"
    assert current_user(conn) == "authenticator"
    row = conn.execute("select current_setting('request.jwt.claims', true)").fetchone()
    assert row is not None and row[0] in ("", None)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("select * from notes")


def test_context_ends_with_a_rollback_too(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction(force_rollback=True):
        set_context(conn, "authenticated", ALICE_CLAIMS)
    assert current_user(conn) == "authenticator"


def test_reset_all_inside_the_transaction_keeps_the_role_but_drops_the_claims(
    conn: psycopg.Connection[Any],
) -> None:
    """Observed: RESET ALL does NOT reset the role (role is GUC_NO_RESET_ALL, like
    session_authorization), so current_user stays 'authenticated' for the rest of the transaction;
    it DOES reset request.jwt.claims, so auth.uid() becomes NULL and alice sees only public notes.
    At COMMIT the transaction-local role switch ends as usual.

    For the proxy: a client's RESET ALL mid-transaction turns "alice" into "authenticated with no
    identity" -- harmless for these policies (NULL never equals user_id), but a policy that treats a
    NULL auth.uid() specially would behave differently, and the Supabase-Studio "RESET ALL" habit
    does not end an impersonation. The proxy should reject RESET ALL / RESET / SET of role and
    request.jwt.* (and DISCARD ALL, SET SESSION AUTHORIZATION) inside client transactions, or
    re-apply the context after them.
    """
    with conn.transaction():
        set_context(conn, "authenticated", ALICE_CLAIMS)
        assert current_user(conn) == "authenticated"
        conn.execute("reset all")
        assert current_user(conn) == "authenticated"
        row = conn.execute("select current_setting('request.jwt.claims', true), auth.uid()").fetchone()
        assert row is not None and row[0] in ("", None) and row[1] is None
        assert titles(conn) == PUBLIC_TITLES
    assert current_user(conn) == "authenticator"


def test_reset_role_inside_the_transaction_fails_closed(conn: psycopg.Connection[Any]) -> None:
    """Observed: RESET ROLE (unlike RESET ALL) does go back to the login role, which can read nothing."""
    with conn.transaction():
        set_context(conn, "authenticated", ALICE_CLAIMS)
        conn.execute("reset role")
        assert current_user(conn) == "authenticator"
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():  # savepoint
            conn.execute("select * from notes")


def test_legacy_claim_setting_takes_precedence(conn: psycopg.Connection[Any]) -> None:
    """Observed (Supabase-compatible auth.uid()): request.jwt.claim.sub wins over request.jwt.claims.

    For the proxy: any client-issued SET / set_config of request.jwt.* (including the legacy
    request.jwt.claim.* names) lets the client choose its identity; the proxy must reject them.
    """
    with conn.transaction():
        set_context(conn, "authenticated", ALICE_CLAIMS)
        conn.execute("select set_config('request.jwt.claim.sub', %s, true)", (BOB,))
        row = conn.execute("select auth.uid()").fetchone()
        assert row is not None and str(row[0]) == BOB
        assert "bob private" in titles(conn)


# --- other logins ------------------------------------------------------------------------------


def test_md5_login_works(pg: DevCluster) -> None:
    with connect(pg, "authenticator_md5", MD5_PASSWORD) as c:
        assert current_user(c) == "authenticator_md5"
        with c.transaction():
            set_context(c, "authenticated", ALICE_CLAIMS)
            assert titles(c) == {"alice private", "alice public", "bob public"}


def test_wrong_password_is_refused(pg: DevCluster) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(pg, "authenticator", "wrong")


def test_service_role_sees_everything(pg: DevCluster) -> None:
    with connect(pg, "rlsproxy_service", SERVICE_LOGIN_PASSWORD) as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("select * from notes")  # NOINHERIT: nothing without the switch
        with c.transaction():
            c.execute("select set_config('role', 'service_role', true)")
            assert current_user(c) == "service_role"
            assert titles(c) == ALL_TITLES
            count = c.execute("select count(*) from auth.users").fetchone()
            assert count == (2,)


def test_superuser_sees_everything(pg: DevCluster) -> None:
    assert set(pg.psql("select title from notes").splitlines()) == ALL_TITLES
