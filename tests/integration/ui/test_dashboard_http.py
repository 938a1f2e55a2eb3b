"""The dashboard over HTTP (engine.ui.create_app through httpx's ASGI transport), on a real
database holding runs executed by a real in-process worker."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
import pytest
from faults import SQLiteLock
from pydantic import BaseModel
from support import Harness, unique_id

from engine import Job, RetryPolicy, job
from engine.schema import runs
from engine.ui import create_app
from engine.ui.pages import SHOWN_LIMIT
from engine.ui.queries import Queries

Client = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


class Order(BaseModel):
    n: int


def make_jobs() -> dict[str, Job]:
    @job(id=unique_id("steps"))
    async def steps(payload: Any, io: Any, ctx: Any) -> dict[str, Any]:
        async def inner(task: Any) -> str:
            return "in"

        async def outer(task: Any) -> dict[str, Any]:
            return {"inner": await io.run_task("inner", inner)}

        async def big(task: Any) -> str:
            return "x" * (SHOWN_LIMIT + 1000)

        await io.run_task("outer", outer, params={"p": 1})
        await io.run_task("big", big)
        await io.wait("nap", 0.01)
        return {"done": True}

    @job(id=unique_id("fails"))
    async def fails(payload: Any, io: Any, ctx: Any) -> None:
        async def boom(task: Any) -> None:
            raise ValueError("boom")

        await io.run_task("boom", boom, retry=RetryPolicy(max_attempts=1))

    @job(id=unique_id("sleeps"))
    async def sleeps(payload: Any, io: Any, ctx: Any) -> str:
        await io.wait("long", 3600)
        return "woke"

    @job(id=unique_id("typed"), payload=Order)
    async def typed(payload: Order, io: Any, ctx: Any) -> int:
        return payload.n

    return {"steps": steps, "fails": fails, "sleeps": sleeps, "typed": typed}


@pytest.fixture
def client() -> Client:
    @asynccontextmanager
    async def make(url: str, **options: Any) -> AsyncIterator[httpx.AsyncClient]:
        app = create_app(url, poll_seconds=0.05, **options)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://127.0.0.1:8008"
            ) as http:
                yield http

    return make


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf-token" content="([^"]+)"', page)
    assert found, page
    return found.group(1)


async def test_runs_page_lists_filters_searches_and_pages(harness: Harness, client: Client) -> None:
    jobs = make_jobs()
    await harness.start(*jobs.values())
    done = await harness.run(jobs["steps"])
    failed = await harness.run(jobs["fails"])
    keyed = await harness.engine.trigger(jobs["typed"].id, {"n": 3}, idempotency_key="order-7")
    await harness.engine.wait_for(keyed, 20)
    async with client(harness.url) as http:
        page = (await http.get("/")).text
        for run in (done, failed):
            assert f'data-id="{run["id"]}" data-status="{run["status"]}"' in page
        assert jobs["steps"].id in page and "COMPLETED" in page and "FAILED" in page

        only_failed = (await http.get("/", params={"status": "failed"})).text
        assert failed["id"] in only_failed and done["id"] not in only_failed

        by_job = (await http.get("/", params={"job": jobs["steps"].id, "version": "1"})).text
        assert done["id"] in by_job and failed["id"] not in by_job
        assert (await http.get("/", params={"version": "9"})).text.count("data-id=") == 0

        # A time range on created_at (UTC); a date that does not parse is said so.
        assert (await http.get("/", params={"from": "2000-01-01T00:00"})).text.count(
            "data-id="
        ) == 3
        assert (await http.get("/", params={"to": "2000-01-01T00:00"})).text.count("data-id=") == 0
        assert (await http.get("/", params={"from": "2999-01-01"})).text.count("data-id=") == 0
        bad_date = (await http.get("/", params={"from": "yesterday", "status": "nope"})).text
        assert "from &#x27;yesterday&#x27; is not a date" in bad_date
        assert "status &#x27;nope&#x27; is not a run status" in bad_date

        by_key = (await http.get("/", params={"q": "order-7"})).text
        assert by_key.count("data-id=") == 1 and keyed in by_key
        by_prefix = (await http.get("/", params={"q": done["id"][:10]})).text
        assert by_prefix.count("data-id=") == 1 and done["id"] in by_prefix

        # Keyset pagination: 60 more runs make two pages with no run on both.
        asleep = await harness.engine.trigger(jobs["sleeps"].id)
        for i in range(60):
            await harness.engine.trigger(jobs["typed"].id, {"n": i})
        first = (await http.get("/")).text
        after = re.search(r'href="/\?after=([0-9a-f]+)"', first)
        assert after, "no link to the next page"
        second = (await http.get("/", params={"after": after.group(1)})).text
        ids_first = set(re.findall(r'data-id="([0-9a-f]+)"', first))
        ids_second = set(re.findall(r'data-id="([0-9a-f]+)"', second))
        assert len(ids_first) == 50 and not ids_first & ids_second
        assert len(ids_first | ids_second) == 64
        assert asleep in ids_second

        # Every page is live: an older page's stream follows its own keyset range.
        assert 'data-live="/events/runs?"' in first
        assert f'data-live="/events/runs?after={after.group(1)}"' in second

        async def streamed() -> dict[str, str]:
            # Streams that end after 0.2 s, so that each is read whole.
            async with client(harness.url, stream_seconds=0.2) as short:
                text = (await short.get("/events/runs", params={"after": after.group(1)})).text
            return dict(re.findall(r'data: \{"id": "([0-9a-f]+)", "status": "([A-Z]+)"', text))

        for _ in range(1500):  # up to 30 s
            if (await harness.engine.get_run(asleep))["status"] == "WAITING":
                break
            await asyncio.sleep(0.02)
        seen = await streamed()
        assert set(seen) == ids_second and seen[asleep] == "WAITING"
        await harness.engine.cancel(asleep)
        assert (await streamed())[asleep] == "CANCELED"


async def test_run_page_shows_values_tree_timeline_and_downloads(
    sqlite_harness: Harness, client: Client
) -> None:
    jobs = make_jobs()
    await sqlite_harness.start(*jobs.values())
    run = await sqlite_harness.run(jobs["steps"], {"order": 42})
    assert run["status"] == "COMPLETED"
    tasks = await sqlite_harness.store.get_tasks(run["id"])
    ids = {t["key"]: t["id"] for t in tasks}
    async with client(sqlite_harness.url) as http:
        page = (await http.get(f"/runs/{run['id']}")).text
        assert "&quot;order&quot;: 42" in page and "&quot;done&quot;: true" in page
        for key in ("outer", "inner", "big", "nap"):
            assert f'data-key="{key}"' in page
        # inner is nested inside outer's node.
        outer_at = page.index('data-key="outer"')
        assert outer_at < page.index('data-key="inner"') < page.index('data-key="big"')
        assert "bar suspended" in page and "nap (wait) suspended" in page
        # A task's values are not in the page: its body is fetched when it is opened.
        assert "x" * 100 not in page and "&quot;p&quot;: 1" not in page
        body = (await http.get(f"/runs/{run['id']}/tasks/{ids['big']}")).text
        assert f"truncated at {SHOWN_LIMIT // 1024} KB" in body and "kind task" in body
        assert "x" * (SHOWN_LIMIT + 1) not in body
        outer = (await http.get(f"/runs/{run['id']}/tasks/{ids['outer']}")).text
        assert "&quot;p&quot;: 1" in outer and "<html" not in outer
        assert (await http.get(f"/runs/{run['id']}/tasks/999999")).status_code == 404

        big = await http.get(f"/runs/{run['id']}/tasks/{ids['big']}/values/output")
        assert big.status_code == 200 and "attachment" in big.headers["content-disposition"]
        assert big.json() == "x" * (SHOWN_LIMIT + 1000)
        params = await http.get(f"/runs/{run['id']}/tasks/{ids['outer']}/values/params")
        assert params.json() == {"p": 1}
        payload = await http.get(f"/runs/{run['id']}/values/payload")
        assert payload.json() == {"order": 42}

        # A lone surrogate recorded before values were checked is shown escaped, not a 500.
        async with sqlite_harness.store.begin() as conn:
            await conn.execute(
                runs.update().where(runs.c.id == run["id"]).values(output={"odd": "a\udc80b"})
            )
        odd = await http.get(f"/runs/{run['id']}")
        assert odd.status_code == 200 and "a\\udc80b" in odd.text
        odd_download = await http.get(f"/runs/{run['id']}/values/output")
        assert odd_download.status_code == 200 and "a\\udc80b" in odd_download.text

        assert (await http.get(f"/runs/{run['id']}/values/secret")).status_code == 404
        assert (await http.get(f"/runs/{run['id']}/tasks/999999/values/output")).status_code == 404
        missing = await http.get("/runs/no-such-run")
        assert missing.status_code == 404 and "no run has id" in missing.text
        # A finished run's page is not live; its event stream says so and ends.
        assert 'id="run-live"' not in page
        events = (await http.get(f"/events/runs/{run['id']}", params={"since": "x"})).text
        assert events.index("event: changed") < events.index("event: final")
        assert "event:" not in (await http.get("/events/runs/no-such-run")).text
        assert (await http.get("/static/app.js")).status_code == 200
        assert (await http.get("/static/app.css")).status_code == 200


async def test_run_page_links_parent_and_child_runs_both_ways(
    sqlite_harness: Harness, client: Client
) -> None:
    @job(id=unique_id("child"))
    async def child(payload: Any, io: Any, ctx: Any) -> int:
        return int(payload["n"])

    @job(id=unique_id("parent"))
    async def parent(payload: Any, io: Any, ctx: Any) -> list[int]:
        return [await io.invoke(f"c{n}", child.id, {"n": n}) for n in range(2)]

    await sqlite_harness.start(parent, child)
    run = await sqlite_harness.run(parent)
    assert run["output"] == [0, 1]
    first, second = run["child_runs"]
    async with client(sqlite_harness.url) as http:
        page = (await http.get(f"/runs/{run['id']}")).text
        assert "Child runs <small>(2)</small>" in page
        # Each child is linked, in the order the parent reached them, with its task.
        at = page.index(f'<a href="/runs/{first["id"]}">')
        assert at < page.index(f'<a href="/runs/{second["id"]}">')
        assert "<td>c0</td>" in page and "<td>c1</td>" in page
        assert 'id="parent-run"' not in page
        child_page = (await http.get(f"/runs/{second['id']}")).text
        assert f'id="parent-run" href="/runs/{run["id"]}"' in child_page
        assert "(task c1)" in child_page and 'id="child-runs"' not in child_page


async def test_cancel_retry_and_trigger_change_the_database(
    harness: Harness, client: Client
) -> None:
    jobs = make_jobs()
    await harness.start(*jobs.values())
    sleeping = await harness.engine.trigger(jobs["sleeps"].id)
    failed = await harness.run(jobs["fails"])
    async with client(harness.url) as http:
        for _ in range(400):
            if (await harness.engine.get_run(sleeping))["status"] == "WAITING":
                break
            await harness.engine.wait_for(failed["id"], 1)
        overview = (await http.get("/jobs")).text
        for made in jobs.values():
            assert f'data-job="{made.id}"' in overview
        # The waiting run and what it waits for.
        assert f'href="/runs/{sleeping}"' in overview and "<code>long</code> (wait)" in overview
        schema = await http.get(f"/jobs/{jobs['typed'].id}/versions/1/schema")
        assert schema.json()["properties"]["n"]["type"] == "integer"
        assert (await http.get(f"/jobs/{jobs['typed'].id}/versions/7/schema")).status_code == 404

        # What it waits for, as `engine runs list/show` say it (engine.waiting).
        row = re.search(rf'<tr data-id="{sleeping}".*?</tr>', (await http.get("/")).text)
        assert row and "wait &#x27;long&#x27; until" in row.group(0)

        page = (await http.get(f"/runs/{sleeping}")).text
        assert "<dt>waiting for</dt><dd>wait &#x27;long&#x27; until" in page
        assert f"engine runs cancel {sleeping}" in page
        # A run under way is live, from the state the page shows.
        since = re.search(r'data-live="/events/runs/[0-9a-f]+\?since=([0-9a-f]+)"', page)
        assert since, "the page of a WAITING run is not live"
        state = await Queries(harness.engine).run_state(sleeping)
        assert state == ("WAITING", since.group(1))
        token = csrf_of(page)

        canceled = await http.post(f"/runs/{sleeping}/cancel", data={"csrf": token})
        assert canceled.status_code == 303 and canceled.headers["location"] == f"/runs/{sleeping}"
        assert (await harness.engine.get_run(sleeping))["status"] == "CANCELED"
        again = await http.post(f"/runs/{sleeping}/cancel", data={"csrf": token})
        assert again.status_code == 409 and "already CANCELED" in again.text

        failed_page = (await http.get(f"/runs/{failed['id']}")).text
        assert f"engine runs retry {failed['id']}" in failed_page
        assert 'data-key="boom"' in failed_page and "ValueError" in failed_page
        retried = await http.post(f"/runs/{failed['id']}/retry", data={"csrf": token})
        assert retried.status_code == 303
        assert (await harness.engine.get_run(failed["id"]))["status"] != "FAILED"

        form = (await http.get("/trigger", params={"job": jobs["typed"].id})).text
        assert f"<option selected>{jobs['typed'].id}</option>" in form
        bad = await http.post(
            "/trigger", data={"csrf": token, "job": jobs["typed"].id, "payload": '{"n": "x"}'}
        )
        assert bad.status_code == 400 and 'id="trigger-error"' in bad.text
        assert "is invalid" in bad.text and "&quot;n&quot;: &quot;x&quot;" in bad.text
        not_json = await http.post(
            "/trigger", data={"csrf": token, "job": jobs["typed"].id, "payload": "{n: 1"}
        )
        assert not_json.status_code == 400 and "not valid JSON" in not_json.text
        assert await harness.engine.list_runs(jobs["typed"].id) == []

        good = await http.post(
            "/trigger",
            data={
                "csrf": token,
                "job": jobs["typed"].id,
                "payload": '{"n": 5}',
                "idempotency_key": "k-1",
            },
        )
        assert good.status_code == 303
        run_id = good.headers["location"].rsplit("/", 1)[1]
        done = await harness.engine.wait_for(run_id, 20)
        assert done["output"] == 5 and done["idempotency_key"] == "k-1"


async def test_state_changes_need_the_csrf_token_and_same_origin(
    sqlite_harness: Harness, client: Client
) -> None:
    jobs = make_jobs()
    await sqlite_harness.start(*jobs.values())
    sleeping = await sqlite_harness.engine.trigger(jobs["sleeps"].id)
    async with client(sqlite_harness.url) as http:
        token = csrf_of((await http.get("/")).text)
        # DNS rebinding: another site's name pointed at 127.0.0.1 is not served.
        rebound = await http.get("/", headers={"host": "evil.example:8008"})
        assert rebound.status_code == 400 and "data-id" not in rebound.text
        assert (await http.get("/", headers={"host": "localhost:8008"})).status_code == 200
        refused = [
            await http.post(f"/runs/{sleeping}/cancel"),
            await http.post(f"/runs/{sleeping}/cancel", data={"csrf": "forged"}),
            await http.post(
                f"/runs/{sleeping}/cancel",
                data={"csrf": token},
                headers={"origin": "https://evil.example"},
            ),
            await http.post("/trigger", data={"job": jobs["typed"].id, "payload": '{"n": 1}'}),
        ]
        assert [r.status_code for r in refused] == [403, 403, 403, 403]
        assert "CSRF" in refused[0].text and "cross-origin" in refused[2].text
        assert (await sqlite_harness.engine.get_run(sleeping))["status"] != "CANCELED"
        assert await sqlite_harness.engine.list_runs(jobs["typed"].id) == []

        same_origin = await http.post(
            f"/runs/{sleeping}/cancel",
            headers={"origin": "http://127.0.0.1:8008", "x-csrf-token": token},
        )
        assert same_origin.status_code == 303
        assert (await sqlite_harness.engine.get_run(sleeping))["status"] == "CANCELED"


async def test_read_only_hides_actions_and_refuses_them(
    sqlite_harness: Harness, client: Client
) -> None:
    jobs = make_jobs()
    await sqlite_harness.start(*jobs.values())
    sleeping = await sqlite_harness.engine.trigger(jobs["sleeps"].id)
    failed = await sqlite_harness.run(jobs["fails"])
    async with client(sqlite_harness.url, read_only=True) as http:
        home = (await http.get("/")).text
        assert "read-only" in home and 'href="/trigger"' not in home
        token = csrf_of(home)
        for run_id in (sleeping, failed["id"]):
            page = (await http.get(f"/runs/{run_id}")).text
            assert "<form" not in page and "engine runs" not in page
        assert (await http.get("/trigger")).status_code == 403
        responses = [
            await http.post(f"/runs/{sleeping}/cancel", data={"csrf": token}),
            await http.post(f"/runs/{failed['id']}/retry", data={"csrf": token}),
            await http.post("/trigger", data={"csrf": token, "job": jobs["typed"].id}),
        ]
        assert [r.status_code for r in responses] == [403, 403, 403]
        assert all("read-only" in r.text for r in responses)
    assert (await sqlite_harness.engine.get_run(sleeping))["status"] != "CANCELED"
    assert (await sqlite_harness.engine.get_run(failed["id"]))["status"] == "FAILED"
    assert await sqlite_harness.engine.list_runs(jobs["typed"].id) == []


async def test_the_token_is_required_on_every_request(
    sqlite_harness: Harness, client: Client
) -> None:
    jobs = make_jobs()
    await sqlite_harness.start(*jobs.values())
    done = await sqlite_harness.run(jobs["steps"])
    async with client(sqlite_harness.url, token="s3cret-token-value") as http:
        for path in ("/", f"/runs/{done['id']}", "/events/runs", "/static/app.js", "/trigger"):
            refused = await http.get(path)
            assert refused.status_code == 401, path
            assert done["id"] not in refused.text
        assert (await http.get("/", params={"token": "wrong"})).status_code == 401
        assert (await http.get("/", headers={"authorization": "Bearer wrong"})).status_code == 401

        login = await http.get(f"/runs/{done['id']}", params={"token": "s3cret-token-value"})
        assert login.status_code == 303
        # Redirected to the same page without the token in the URL, with the cookie set.
        assert login.headers["location"] == f"/runs/{done['id']}"
        assert "engine_ui_token=" in login.headers["set-cookie"]
        assert "httponly" in login.headers["set-cookie"].lower()
        assert (await http.get(f"/runs/{done['id']}")).status_code == 200  # the cookie

        http.cookies.clear()
        assert (await http.get("/")).status_code == 401
        bearer = await http.get("/", headers={"authorization": "Bearer s3cret-token-value"})
        assert bearer.status_code == 200 and done["id"] in bearer.text


async def test_known_secrets_never_reach_a_page_or_a_download(
    sqlite_harness: Harness, client: Client
) -> None:
    from engine import secrets

    key = f"sk-ui-{uuid.uuid4().hex}"
    secrets.register(key)

    @job(id=unique_id("leaky"))
    async def leaky(payload: Any, io: Any, ctx: Any) -> dict[str, Any]:
        async def echo(task: Any) -> str:
            return str(payload["key"])

        return {"echo": await io.run_task("echo", echo, params={"key": payload["key"]})}

    await sqlite_harness.start(leaky)
    run = await sqlite_harness.run(leaky, {"key": key})
    assert run["status"] == "COMPLETED"
    tasks = await sqlite_harness.store.get_tasks(run["id"])
    async with client(sqlite_harness.url) as http:
        responses = [
            await http.get(f"/runs/{run['id']}"),
            await http.get("/", params={"q": run["id"]}),
            await http.get(f"/runs/{run['id']}/values/payload"),
            await http.get(f"/runs/{run['id']}/values/output"),
            await http.get(f"/runs/{run['id']}/tasks/{tasks[0]['id']}"),
            await http.get(f"/runs/{run['id']}/tasks/{tasks[0]['id']}/values/params"),
            await http.get(f"/runs/{run['id']}/tasks/{tasks[0]['id']}/values/output"),
        ]
    for response in responses:
        assert response.status_code == 200
        assert key not in response.text
    assert "[REDACTED]" in responses[0].text
    assert responses[2].json() == {"key": "[REDACTED]"}


async def test_streams_delays_deadlines_and_schedules_are_shown(
    harness: Harness, client: Client
) -> None:
    @job(id=unique_id("writer"), timeout=3600)
    async def writer(payload: Any, io: Any, ctx: Any) -> str:
        for letter in "abc":
            await io.stream.write("letters", letter)
        await io.stream.write("done", {"n": 3})
        return "written"

    @job(id=unique_id("nightly"), schedule="0 2 * * *")
    async def nightly(payload: Any, io: Any, ctx: Any) -> None:
        return None

    await harness.start(writer, nightly)
    run = await harness.run(writer)
    assert run["status"] == "COMPLETED"
    later = await harness.engine.trigger(writer.id, delay=3600)
    async with client(harness.url) as http:
        page = (await http.get(f"/runs/{run['id']}")).text
        assert "Streams <small>(2)</small>" in page
        letters = re.search(r'<tr class="stream" data-stream="letters">.*?</tr>', page)
        assert letters and "<td>3</td>" in letters.group(0)
        assert f"engine runs stream {run['id']} letters" in letters.group(0)
        assert f'href="/runs/{run["id"]}/streams/letters"' in page
        assert '<dt>deadline</dt><dd><span id="run-deadline">' in page

        read = (await http.get(f"/runs/{run['id']}/streams/letters")).json()
        assert [c["data"] for c in read["chunks"]] == ["a", "b", "c"]
        assert [c["seq"] for c in read["chunks"]] == [1, 2, 3] and read["next"] is None
        rest = (await http.get(f"/runs/{run['id']}/streams/letters", params={"after": 2})).json()
        assert [c["data"] for c in rest["chunks"]] == ["c"]
        assert (await http.get(f"/runs/{run['id']}/streams/none")).json()["chunks"] == []
        assert (await http.get("/runs/no-such-run/streams/letters")).status_code == 404
        bad = await http.get(f"/runs/{run['id']}/streams/letters", params={"after": "x"})
        assert bad.status_code == 400 and "after=" in bad.text

        delayed = (await http.get(f"/runs/{later}")).text
        assert "<dt>delayed until</dt>" in delayed and "Streams" not in delayed

        jobs_page = (await http.get("/jobs")).text
        planned = re.search(
            r'<tr class="schedule" data-expression="0 2 \* \* \*">.*?</tr>', jobs_page
        )
        assert planned and "02:00:00" in planned.group(0) and "paused" not in planned.group(0)
        assert await harness.engine.pause_schedule(nightly.id) == 1
        paused = (await http.get("/jobs")).text
        assert re.search(r'data-expression="0 2 \* \* \*"><td>.*?</td><td><strong>paused', paused)


async def test_pages_never_wait_for_the_sqlite_write_lock(
    sqlite_harness: Harness, client: Client
) -> None:
    """The dashboard only reads, and its reads take no lock: while another process holds the
    write lock (as a worker does for each write), every page and live stream answers. Its busy
    timeout is 1 s here, so a read that waited for the lock would answer 503."""
    jobs = make_jobs()
    await sqlite_harness.start(*jobs.values())
    done = await sqlite_harness.run(jobs["steps"])
    sleeping = await sqlite_harness.engine.trigger(jobs["sleeps"].id)
    for _ in range(1500):  # up to 30 s
        if (await sqlite_harness.engine.get_run(sleeping))["status"] == "WAITING":
            break
        await asyncio.sleep(0.02)
    await sqlite_harness.stop()
    task = (await sqlite_harness.store.get_tasks(done["id"]))[0]
    path = sqlite_harness.url.split("///", 1)[1]
    async with client(f"{sqlite_harness.url}?timeout=1", stream_seconds=0.3) as http:
        async with SQLiteLock(path):
            answers = {
                path: await http.get(path)
                for path in (
                    "/",
                    "/?status=WAITING",
                    f"/runs/{done['id']}",
                    f"/runs/{sleeping}",
                    f"/runs/{done['id']}/tasks/{task['id']}",
                    "/jobs",
                    "/events/runs",
                    f"/events/runs/{sleeping}",
                )
            }
    for path, answer in answers.items():
        assert answer.status_code == 200, (path, answer.text)
    assert sleeping in answers["/?status=WAITING"].text
    assert "event: outage" not in answers["/events/runs"].text
    assert f'"id": "{sleeping}"' in answers["/events/runs"].text
