"""The dashboard as an ASGI app (Starlette): `create_app(database_url, ...)`.

Pages are rendered on the server (engine.ui.pages); app.js adds live updates (server-sent
events), confirmations, collapsible JSON and the trigger form's CLI preview.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shlex
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from .. import codec, secrets, usage
from ..client import Engine, resolve_database_url
from ..exceptions import DatabaseError, EngineError, InvalidRunStateError, RunNotFoundError
from ..prices import PriceTable
from ..schema import FINAL_RUN_STATUSES
from ..store import DEFAULT_DATABASE_URL
from . import assets, security
from .pages import Page, json_text, run_row, task_body, walk
from .queries import PAGE_SIZE, Queries, RunFilter, fingerprint, state_digest

log = logging.getLogger("engine.ui")

RUN_FIELDS = ("payload", "output", "error")
TASK_FIELDS = ("params", "output", "error")


@dataclass
class Settings:
    database_url: str
    read_only: bool = False
    token: str | None = None
    # How often the live runs stream looks for changes, and how long one stream lasts before
    # the browser reconnects (EventSource does so by itself).
    poll_seconds: float = 1.0
    stream_seconds: float = 300.0


class UI:
    """The state the routes share: the engine (one connection pool), the reads, the page kit."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = Engine(settings.database_url, pool_size=5)
        self.queries = Queries(self.engine)
        self.csrf = security.new_csrf_token()
        url = self.engine.store.parsed_url
        shown = url.render_as_string(hide_password=True)
        database = (
            ""
            if settings.database_url == DEFAULT_DATABASE_URL
            else f" --database-url {shlex.quote(shown)}"
        )
        self.page = Page(self.csrf, settings.read_only, database)
        # Loaded once; `engine ui` refuses to start on a price table that does not load.
        self.prices = PriceTable.load()
        # Set when the server shuts down: event streams end at once instead of holding it.
        self.closing = asyncio.Event()

    def streaming(self, deadline: float) -> bool:
        """Whether an event stream goes on (its deadline not passed, the server not closing)."""
        return time.monotonic() < deadline and not self.closing.is_set()

    async def pause(self) -> None:
        """An event stream's wait between two reads: `poll_seconds`, or until shutdown."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closing.wait(), self.settings.poll_seconds)


def _ui(request: Request) -> UI:
    ui: UI = request.app.state.ui
    return ui


def _utf8(text: str) -> bytes:
    # Text recorded before values were checked may hold a lone surrogate, which UTF-8 cannot
    # encode: it is shown escaped (as `engine runs show` does) rather than failing the page.
    return text.encode("utf-8", errors="backslashreplace")


def _html(text: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(_utf8(text), status_code=status)


# -- pages -----------------------------------------------------------------------------------------


async def runs_page(request: Request) -> Response:
    ui = _ui(request)
    where = RunFilter.from_params(request.query_params)
    after = request.query_params.get("after") or None
    rows, next_after = await ui.queries.list_runs(where, after)
    jobs = await ui.queries.job_ids()
    return _html(ui.page.runs(rows, where, next_after, after, jobs))


async def run_page(request: Request) -> Response:
    ui = _ui(request)
    run_id = request.path_params["run_id"]
    try:
        run = await ui.queries.run(run_id)
    except RunNotFoundError as exc:
        return _html(ui.page.message("Not found", exc.message), 404)
    await ui.queries.add_waiting_for([run])
    tasks = await ui.queries.tasks(run_id)
    logs = await ui.queries.logs(run_id)
    # Tokens and cost per task (subtasks included) and per run, as `engine runs show` has them.
    holder: dict[str, Any] = {"tasks": tasks}
    usage.attach(holder, await ui.queries.usage(run_id), ui.prices)
    parent_task, child_runs = await ui.queries.links(run)
    run = {
        **run,
        "usage": holder.get("usage"),
        "parent_task": parent_task,
        "child_runs": child_runs,
        "streams": await ui.queries.streams(run_id),
    }
    live = None
    if run["status"] not in FINAL_RUN_STATUSES:
        live = f"/events/runs/{run_id}?since={state_digest(run, walk(tasks))}"
    return _html(ui.page.run(run, tasks, logs, live))


async def run_value(request: Request) -> Response:
    ui = _ui(request)
    run_id, field = request.path_params["run_id"], request.path_params["field"]
    if field not in RUN_FIELDS:
        return Response(f"no field {field!r}: one of {', '.join(RUN_FIELDS)}", 404)
    try:
        run = await ui.queries.run(run_id)
    except RunNotFoundError as exc:
        return Response(exc.message, 404)
    return _download(run.get(field), f"{run_id}-{field}.json")


async def stream_chunks(request: Request) -> Response:
    """A page of a run's stream as JSON: {run_id, stream, chunks: [{seq, task, attempt, data,
    written_at}], next}; `next` is the URL of the following page, or null."""
    ui = _ui(request)
    run_id, name = request.path_params["run_id"], request.path_params["stream"]
    text = request.query_params.get("after", "0")
    if not text.isdigit():
        return Response(f"after={text!r}: give the seq of the last chunk read (0 or more)", 400)
    try:
        await ui.queries.run(run_id)
    except RunNotFoundError as exc:
        return Response(exc.message, 404)
    chunks, last = await ui.queries.stream_page(run_id, name, int(text))
    following = (
        None if last is None else f"/runs/{run_id}/streams/{quote(name, safe='')}?after={last}"
    )
    body = {"run_id": run_id, "stream": name, "chunks": chunks, "next": following}
    return Response(_utf8(json_text(body)), media_type="application/json")


async def task_fragment(request: Request) -> Response:
    """An opened task's body (engine.ui.pages.task_body), fetched by app.js."""
    ui = _ui(request)
    run_id, task_id = request.path_params["run_id"], request.path_params["task_id"]
    task = await ui.queries.task(run_id, task_id)
    if task is None:
        return Response(f"run {run_id} has no task {task_id}", 404)
    return _html(task_body(run_id, task))


async def task_value(request: Request) -> Response:
    ui = _ui(request)
    run_id, field = request.path_params["run_id"], request.path_params["field"]
    task_id: int = request.path_params["task_id"]
    task = await ui.queries.task(run_id, task_id) if field in TASK_FIELDS else None
    if task is None:
        return Response(f"run {run_id} has no task {task_id} with a field {field!r}", 404)
    return _download(task.get(field), f"{run_id}-task{task_id}-{field}.json")


def _download(value: Any, filename: str) -> Response:
    return Response(
        _utf8(json_text(value)),
        media_type="application/json",
        headers={"content-disposition": f'attachment; filename="{filename}"'},
    )


async def jobs_page(request: Request) -> Response:
    ui = _ui(request)
    return _html(ui.page.overview(await ui.queries.overview()))


async def job_schema(request: Request) -> Response:
    ui = _ui(request)
    job_id, version = request.path_params["job_id"], request.path_params["version"]
    for job in await ui.queries.jobs():
        for entry in job["versions"] if job["job_id"] == job_id else []:
            if entry["version"] == version:
                return _download(entry["schema"], "schema.json")
    return Response(f"no job {job_id!r} version {version!r} is registered", 404)


async def trigger_page(request: Request) -> Response:
    ui = _ui(request)
    if ui.settings.read_only:
        return _html(ui.page.message("Read-only", "this dashboard is read-only"), 403)
    form = {"job": request.query_params.get("job", "")}
    return _html(ui.page.trigger(await ui.queries.jobs(), form))


# -- live updates ----------------------------------------------------------------------------------


def _event_stream(events: AsyncIterator[str]) -> Response:
    # no-store and no proxy buffering: each event must reach the browser as soon as it is written
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"cache-control": "no-store", "x-accel-buffering": "no"},
    )


class _Health:
    """Whether a live page's stream could read the database: `outage` (with the reason) on
    the first failed read, `recovered` on the first good read after one. The page shows a
    banner in between (app.js), since it cannot be current while the database is away."""

    def __init__(self) -> None:
        self.down = False

    def failed(self, exc: DatabaseError) -> str:
        if self.down:
            return ": still down\n\n"
        self.down = True
        reason = secrets.scrub(str(exc.message))
        return f"event: outage\ndata: {json.dumps({'reason': reason})}\n\n"

    def read(self) -> str:
        self.down = False
        return "event: recovered\ndata: {}\n\n"


async def runs_events(request: Request) -> Response:
    """Server-sent events: the rows of a runs page (same filters, same `after`) as they change.

    Each connection starts by sending every row of the page (the browser replaces the rows it
    has, so nothing that changed between the page load and the connection is missed), then
    polls the database every `poll_seconds` and sends the rows that changed or appeared: on
    the first page, new runs too; an older page is the same keyset range (the runs older than
    `after`), re-read with the same one indexed query.
    """
    ui = _ui(request)
    where = RunFilter.from_params(request.query_params)
    after = request.query_params.get("after") or None

    async def stream() -> AsyncIterator[str]:
        seen: dict[str, tuple[Any, ...]] = {}
        deadline = time.monotonic() + ui.settings.stream_seconds
        health = _Health()
        yield "retry: 1000\n\n"
        while ui.streaming(deadline):
            try:
                rows, _ = await ui.queries.list_runs(where, after, PAGE_SIZE)
            except DatabaseError as exc:
                log.warning("dashboard: reading runs failed: %s", exc)
                yield health.failed(exc)
                await ui.pause()
                continue
            if health.down:
                yield health.read()
            changed = [r for r in reversed(rows) if seen.get(r["id"]) != fingerprint(r)]
            for row in changed:
                seen[row["id"]] = fingerprint(row)
                data = json.dumps({"id": row["id"], "status": row["status"], "html": run_row(row)})
                yield f"event: run\ndata: {data}\n\n"
            if not changed:
                yield ": idle\n\n"
            await ui.pause()

    return _event_stream(stream())


async def run_events(request: Request) -> Response:
    """Server-sent events for one run's page: `changed` whenever the run or any of its tasks
    changes from the state the page was rendered with (`since`), then `final` once it ends."""
    ui = _ui(request)
    run_id = request.path_params["run_id"]
    since = request.query_params.get("since", "")

    async def stream() -> AsyncIterator[str]:
        known = since
        deadline = time.monotonic() + ui.settings.stream_seconds
        health = _Health()
        yield "retry: 1000\n\n"
        while ui.streaming(deadline):
            try:
                state = await ui.queries.run_state(run_id)
            except DatabaseError as exc:
                log.warning("dashboard: reading run %s failed: %s", run_id, exc)
                yield health.failed(exc)
                await ui.pause()
                continue
            if health.down:
                yield health.read()
            if state is None:
                return
            status, digest = state
            if digest != known:
                known = digest
                yield "event: changed\ndata: {}\n\n"
            elif status in FINAL_RUN_STATUSES:
                yield "event: final\ndata: {}\n\n"
                return
            else:
                yield ": idle\n\n"
            await ui.pause()

    return _event_stream(stream())


# -- actions ---------------------------------------------------------------------------------------


async def _checked_form(request: Request) -> dict[str, str] | Response:
    """The POSTed form, or the response refusing it (read-only, cross-site, no CSRF token)."""
    ui = _ui(request)
    if ui.settings.read_only:
        return Response("refused: this dashboard is read-only", 403)
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.scope["headers"]}
    if security.cross_origin(headers, headers.get("host")):
        return Response("refused: cross-origin request", 403)
    body = (await request.body()).decode("utf-8", errors="replace")
    form = {k: v[-1] for k, v in parse_qs(body, keep_blank_values=True).items()}
    given = form.get(security.CSRF_FIELD) or headers.get(security.CSRF_HEADER)
    if not security.same(given, ui.csrf):
        return Response("refused: missing or wrong CSRF token; reload the page", 403)
    return form


async def cancel_action(request: Request) -> Response:
    return await _run_action(request, "cancel")


async def retry_action(request: Request) -> Response:
    return await _run_action(request, "retry")


async def _run_action(request: Request, action: str) -> Response:
    form = await _checked_form(request)
    if isinstance(form, Response):
        return form
    ui = _ui(request)
    run_id = request.path_params["run_id"]
    try:
        if action == "cancel":
            await ui.engine.cancel(run_id)
        else:
            await ui.engine.retry(run_id)
    except RunNotFoundError as exc:
        return _html(ui.page.message("Not found", exc.message), 404)
    except InvalidRunStateError as exc:
        return _html(ui.page.message(f"Cannot {action}", exc.message), 409)
    return RedirectResponse(f"/runs/{run_id}", status_code=303)


async def trigger_action(request: Request) -> Response:
    form = await _checked_form(request)
    if isinstance(form, Response):
        return form
    ui = _ui(request)
    job_id = form.get("job", "").strip()
    text = form.get("payload", "").strip()
    try:
        if not job_id:
            raise EngineError("choose a job to trigger")
        try:
            payload = codec.parse_input(text, "payload") if text else None
        except json.JSONDecodeError as exc:
            raise EngineError(
                f"the payload is not valid JSON ({exc.msg} at line {exc.lineno} column "
                f'{exc.colno}): write e.g. {{"n": 1}}'
            ) from None
        run_id = await ui.engine.trigger(
            job_id,
            payload,
            idempotency_key=form.get("idempotency_key", "").strip() or None,
            version=form.get("version", "").strip() or None,
        )
    except DatabaseError:
        raise  # not the user's mistake: database_unavailable's page
    except EngineError as exc:
        page = ui.page.trigger(await ui.queries.jobs(), form, error=exc.message)
        return _html(page, 400)
    return RedirectResponse(f"/runs/{run_id}", status_code=303)


# -- the app ---------------------------------------------------------------------------------------


def create_app(
    database_url: str | None = None,
    *,
    read_only: bool = False,
    token: str | None = None,
    poll_seconds: float = 1.0,
    allowed_hosts: list[str] | None = security.LOOPBACK,
    stream_seconds: float = 300.0,
) -> Starlette:
    """The dashboard on `database_url` (default: $ENGINE_DATABASE_URL, else ./engine.db).

    With `token`, every request must carry it (engine.ui.security). With `allowed_hosts`,
    requests must name one of them (None: any).
    """
    settings = Settings(
        resolve_database_url(database_url), read_only, token, poll_seconds, stream_seconds
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        ui = UI(settings)
        app.state.ui = ui
        try:
            yield
        finally:
            await ui.engine.close()

    routes = [
        Route("/", runs_page),
        Route("/events/runs", runs_events),
        Route("/events/runs/{run_id}", run_events),
        Route("/runs/{run_id}", run_page),
        Route("/runs/{run_id}/values/{field}", run_value),
        Route("/runs/{run_id}/tasks/{task_id:int}", task_fragment),
        Route("/runs/{run_id}/streams/{stream}", stream_chunks),
        Route("/runs/{run_id}/tasks/{task_id:int}/values/{field}", task_value),
        Route("/runs/{run_id}/cancel", cancel_action, methods=["POST"]),
        Route("/runs/{run_id}/retry", retry_action, methods=["POST"]),
        Route("/jobs", jobs_page),
        Route("/jobs/{job_id}/versions/{version}/schema", job_schema),
        Route("/trigger", trigger_page),
        Route("/trigger", trigger_action, methods=["POST"]),
        Route("/static/app.css", assets.css),
        Route("/static/app.js", assets.js),
    ]
    middleware = [Middleware(security.TokenMiddleware, token=token)] if token else []
    if allowed_hosts:
        # Bound to loopback, a page of another site must not reach the dashboard by pointing
        # its own host name at 127.0.0.1 (DNS rebinding): only loopback names are served.
        middleware.insert(0, Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts))
    return Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={DatabaseError: database_unavailable},
    )


async def database_unavailable(request: Request, exc: Exception) -> Response:
    """A page or an action while the database is away (restarting, unreachable, connection
    cut): one clear page (503), never a traceback; the page works again once it is back."""
    ui = _ui(request)
    reason = secrets.scrub(str(getattr(exc, "message", exc)))
    log.warning("dashboard: %s %s: %s", request.method, request.url.path, reason)
    text = f"The database did not answer ({reason})."
    if request.method == "POST":
        # Each action is one transaction: whole or not at all, never half.
        text += (
            " The action is one transaction: it took effect whole or not at all. Reload the "
            "page to see which, then try again if need be."
        )
    else:
        text += " Reload the page in a moment."
    return _html(ui.page.message("Database unavailable", text), 503)
