"""The usage spool on its own: durable rows, adoption by lock, replay into the real database."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.metering import UsageWriter, usage_columns
from gateway.spool import Spool, row_decoder
from tests.factories import make_key
from tests.gateway_support import run_async
from tests.usage_writer_support import FlakyDatabase, closing_connection, row
from usage.models import UsageEvent
from usage.seal import SEALED, seal_matches

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_spooled_row_comes_back_exactly_as_written(world, tmp_path):
    key, _ = make_key(world.org)
    spool = Spool(tmp_path, database_identity="db-a")
    original = row(world, key, "req_roundtrip")
    assert spool.append([original, original]) == 1  # a duplicate request id is kept once
    [(seq, blob)] = spool.batch(spool.own, 10)
    assert row_decoder(usage_columns())(blob) == original
    assert (spool.depth(), spool.own.path.stat().st_mode & 0o777) == (1, 0o600)
    spool.close()
    assert list(tmp_path.iterdir()) != []  # not empty: left for the next process


def test_a_live_writers_file_is_never_adopted_and_a_dead_ones_is(world, tmp_path):
    key, _ = make_key(world.org)
    writer = Spool(tmp_path, database_identity="db-a")
    writer.append([row(world, key, "req_1"), row(world, key, "req_2")])
    other = Spool(tmp_path, database_identity="db-a")
    assert other.adopt_orphans() == []  # its writer holds the lock

    writer.close()  # as a process exit (or kill -9) releases the flock
    elsewhere = Spool(tmp_path, database_identity="db-b")
    assert elsewhere.adopt_orphans() == []  # another database's events are not ours to replay
    [adopted] = other.adopt_orphans()
    assert (adopted.depth, other.depth()) == (2, 2)
    assert Spool(tmp_path, database_identity="db-a").adopt_orphans() == []  # now `other` holds it

    other.forget(adopted, [seq for seq, _ in other.batch(adopted, 10)])
    assert other.release_if_done(adopted)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("backend", ["psycopg", "orm"])
def test_writes_the_database_refuses_are_spooled_then_replayed_once(world, tmp_path, backend):
    key, _ = make_key(world.org)
    database = FlakyDatabase(down=True)

    async def scenario() -> dict:
        writer = UsageWriter(run_db=database.run, spool=Spool(tmp_path, database_identity="x"))
        writer.use_psycopg = backend == "psycopg"
        if writer.use_psycopg:
            writer.live.insert = database.wrap(writer.live.insert)
            writer.replayer.insert = database.wrap(writer.replayer.insert)
        writer.start()
        await asyncio.gather(*(writer.write(row(world, key, f"req_{i}")) for i in range(5)))
        state = {"spooled": writer.spool.depth(), "db_down": writer.db_down}
        await writer.write(row(world, key, "req_5"))  # straight to the spool: no wait on a dead database
        state["in_db_while_down"] = await asyncio.to_thread(closing_connection, lambda: UsageEvent.objects.count())
        database.down = False
        writer.wake_replay.set()
        for _ in range(100):
            if writer.spool.depth() == 0 and not writer.db_down:
                break
            await asyncio.sleep(0.05)
        await writer.replay()  # a second replay has nothing left to send
        await writer.write(row(world, key, "req_6"))
        state["depth_after"] = writer.spool.depth()
        await writer.stop()
        return state

    state = run_async(scenario())
    assert state == {"spooled": 5, "db_down": True, "in_db_while_down": 0, "depth_after": 0}
    assert sorted(UsageEvent.objects.values_list("request_id", flat=True)) == [f"req_{i}" for i in range(7)]
    # Sealed at the source, and the seal still matches after the trip through the spool and the database.
    assert all(seal_matches(values, values["seal"]) for values in UsageEvent.objects.values(*SEALED, "seal"))
    assert list(tmp_path.iterdir()) == []  # drained and removed at shutdown


def test_a_row_the_database_refuses_for_good_is_kept_aside_and_the_rest_replays(world, tmp_path):
    key, _ = make_key(world.org)
    spool = Spool(tmp_path, database_identity="x")
    spool.append([row(world, key, "req_good"), row(world, key, "req_orphan", workspace_id=10**9), row(world, key, "req_good_2")])

    async def scenario() -> tuple[int, int, int]:
        writer = UsageWriter(spool=spool)
        replayed = await writer.replay()
        result = (replayed, spool.depth(), spool.rejected())
        await writer.stop()
        return result

    assert run_async(scenario()) == (2, 0, 1)
    assert sorted(UsageEvent.objects.values_list("request_id", flat=True)) == ["req_good", "req_good_2"]
    assert list(tmp_path.glob("*.spool"))  # the refused row stays on disk for an operator


@pytest.fixture
def spool_status_cleared():
    from lib.redis import redis_client
    from usage.spool_status import STATUS_KEY

    redis_client().delete(STATUS_KEY)
    yield
    redis_client().delete(STATUS_KEY)


def test_admins_see_a_banner_when_a_spool_is_minutes_old(world, client_for, spool_status_cleared):
    from console.audit import Actor
    from console.models import Role
    from console.services import membership_add
    from lib.redis import redis_client
    from usage.spool_status import STATUS_KEY, encode_status

    fresh = encode_status(host="gw-1", pid=41, depth=5, rejected=0, oldest=time.time() - 20)
    redis_client().hset(STATUS_KEY, "usage-gw-1-41-aa", fresh)
    assert "usage-spool-banner" not in client_for(world.owner).get("/w/acme/").content.decode()  # seconds old: no alarm yet

    old = encode_status(host="gw-2", pid=42, depth=1234, rejected=0, oldest=time.time() - 600)
    redis_client().hset(STATUS_KEY, "usage-gw-2-42-bb", old)
    for user, slug in ((world.owner, "acme"), (world.admin, "acme"), (world.admin, "acme-research")):
        page = client_for(user).get(f"/w/{slug}/secrets/").content.decode()
        assert 'data-testid="usage-spool-banner"' in page, (user, slug)
        assert "in the spool of the gateway on <strong>gw-2</strong> (pid 42), which cannot write to the database" in page
        assert "gw-1" not in page
    membership_add(workspace=world.sub, user=world.viewer, role=Role.ADMIN, actor=Actor.system("tests"))
    for user, slug in (
        (world.developer, "acme"),
        (world.viewer, "acme"),
        (world.viewer, "acme-research"),
        (world.sub_member, "acme-research"),
    ):
        assert "usage-spool-banner" not in client_for(user).get(f"/w/{slug}/").content.decode(), (user, slug)

    redis_client().hdel(STATUS_KEY, "usage-gw-2-42-bb")  # drained: the gateway removes its entry
    assert "usage-spool-banner" not in client_for(world.owner).get("/w/acme/").content.decode()


def test_when_neither_the_database_nor_the_spool_takes_a_row_the_write_fails(world, tmp_path):
    key, _ = make_key(world.org)
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")  # the spool directory cannot be created: as a full or read-only disk
    database = FlakyDatabase(down=True)

    async def scenario() -> list:
        writer = UsageWriter(run_db=database.run, spool=Spool(blocker / "spool", database_identity="x"))
        writer.use_psycopg = False
        writer.start()
        outcomes = []
        for i, back in enumerate((False, False, True)):
            database.down = not back
            try:
                await writer.write(row(world, key, f"req_{i}"))
                outcomes.append("written")
            except Exception:
                outcomes.append("failed")
        await writer.stop()
        return outcomes

    # The request is refused (503 usage_unavailable) rather than served unmetered; once the
    # database is back the write goes through even though the spool is still broken.
    assert run_async(scenario()) == ["failed", "failed", "written"]
    assert list(UsageEvent.objects.values_list("request_id", flat=True)) == ["req_2"]
