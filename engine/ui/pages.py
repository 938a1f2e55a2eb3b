"""The dashboard's HTML, rendered on the server from plain Python strings.

No template engine: the pages are few and small, and every value goes through `h` (HTML
escaping) on its way in, which is what a template engine's autoescape would give us.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable
from datetime import datetime
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from ..schema import RUN_STATUSES
from ..usage import summary_text
from .queries import Overview, RunFilter, duration

# Values whose JSON is longer than this are cut on the page and offered whole for download:
# a 50 MB output must not freeze the browser.
SHOWN_LIMIT = 64 * 1024
SUSPENDED_KINDS = ("wait", "poll")
CANCELABLE = ("QUEUED", "WAITING", "RUNNING")


def h(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


class Page:
    """What every page shares: the CSRF token for its forms, read-only mode, and how to spell
    `--database-url` in the equivalent CLI commands."""

    def __init__(self, csrf: str, read_only: bool, cli_database: str) -> None:
        self.csrf = csrf
        self.read_only = read_only
        self.cli_database = cli_database

    def layout(self, title: str, body: str) -> str:
        nav = '<a href="/">Runs</a> <a href="/jobs">Jobs &amp; workers</a>'
        if not self.read_only:
            nav += ' <a href="/trigger">Trigger a run</a>'
        mode = '<span class="badge">read-only</span>' if self.read_only else ""
        return (
            "<!doctype html><html lang=en><head><meta charset=utf-8>"
            f"<title>{h(title)} · engine</title>"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta name="csrf-token" content="{h(self.csrf)}">'
            '<link rel="stylesheet" href="/static/app.css">'
            '<script src="/static/app.js" defer></script></head><body>'
            f"<header><strong>engine</strong> <nav>{nav}</nav> {mode}</header>"
            f"<main>{body}</main></body></html>"
        )

    def cli(self, *args: str) -> str:
        return shlex.join(["engine", *args]) + self.cli_database

    def action(self, path: str, label: str, command: str, confirm: str, css: str = "") -> str:
        """A button that POSTs to `path` after a confirmation, beside the CLI command that does
        the same thing."""
        if self.read_only:
            return ""
        return (
            f'<form method="post" action="{h(path)}" class="action" '
            f'data-confirm="{h(confirm)}">'
            f'<input type="hidden" name="csrf" value="{h(self.csrf)}">'
            f'<button type="submit" class="{h(css)}">{h(label)}</button> '
            f'<code class="cli">{h(command)}</code></form>'
        )

    # -- runs ------------------------------------------------------------------------------------

    def runs(
        self,
        rows: list[dict[str, Any]],
        where: RunFilter,
        next_after: str | None,
        after: str | None,
        jobs: Iterable[str],
    ) -> str:
        """A runs page: the newest (`after` None), or the runs older than run `after`."""
        job_options = "".join(f'<option value="{h(j)}">' for j in jobs)
        status_options = '<option value="">any status</option>' + "".join(
            f"<option{' selected' if s == where.status else ''}>{s}</option>" for s in RUN_STATUSES
        )
        form = (
            '<form class="filters" method="get" action="/">'
            f'<input name="q" placeholder="run id or idempotency key" value="{h(where.query)}">'
            f'<input name="job" list="jobs" placeholder="job" value="{h(where.job)}">'
            f'<datalist id="jobs">{job_options}</datalist>'
            f'<select name="status">{status_options}</select>'
            f'<input name="version" placeholder="version" value="{h(where.version)}" size=8>'
            '<label>from (UTC) <input name="from" type="datetime-local" '
            f'value="{h(where.since_text)}"></label>'
            '<label>to <input name="to" type="datetime-local" '
            f'value="{h(where.until_text)}"></label>'
            '<button type="submit">Filter</button> <a href="/">clear</a></form>'
        )
        problems = "".join(f'<div class="error">{h(p)}</div>' for p in where.problems)
        body = "".join(run_row(r) for r in rows)
        params = filter_params(where)
        more = ""
        if next_after:
            more = f'<a class="next" href="/?{h(urlencode({**params, "after": next_after}))}">'
            more += "Older runs →</a>"
        if after is not None:
            more = f'<a href="/?{h(urlencode(params))}">← Newest runs</a> ' + more
        # Every page is live: an older one follows its own keyset range (`after`).
        here = params if after is None else {**params, "after": after}
        live = f' data-live="/events/runs?{h(urlencode(here))}"'
        empty = "" if rows else '<p class="empty">no runs</p>'
        return self.layout(
            "Runs",
            f"<h1>Runs</h1>{form}{problems}"
            f'<table class="runs" id="runs"{live}><thead><tr><th>Status</th><th>Run</th>'
            "<th>Job</th><th>Version</th><th>Created (UTC)</th><th>Duration</th></tr></thead>"
            f'<tbody>{body}</tbody></table>{empty}<p class="pager">{more}</p>',
        )

    # -- one run ---------------------------------------------------------------------------------

    def run(
        self,
        run: dict[str, Any],
        tasks: list[dict[str, Any]],
        logs: list[dict[str, Any]],
        live: str | None = None,
    ) -> str:
        run_id = run["id"]
        actions = []
        if run["status"] in CANCELABLE:
            actions.append(
                self.action(
                    f"/runs/{run_id}/cancel",
                    "Cancel",
                    self.cli("runs", "cancel", run_id),
                    f"Cancel run {run_id}?",
                    "danger",
                )
            )
        if run["status"] == "FAILED":
            actions.append(
                self.action(
                    f"/runs/{run_id}/retry",
                    "Retry",
                    self.cli("runs", "retry", run_id),
                    f"Retry run {run_id} from where it failed?",
                )
            )
        facts = [
            ("status", status_badge(run["status"])),
            *([("waiting for", h(run["waiting_for"]))] if run.get("waiting_for") else []),
            ("job", f'<a href="/?{h(urlencode({"job": run["job_id"]}))}">{h(run["job_id"])}</a>'),
            ("version", h(run["job_version"])),
            ("idempotency key", h(run.get("idempotency_key")) or "-"),
            ("attempt", h(run.get("attempt"))),
            ("created", h(short_time(run["created_at"]))),
            ("started", h(short_time(run["started_at"]))),
            ("completed", h(short_time(run["completed_at"]))),
            ("duration", h(fmt_duration(duration(run)))),
        ]
        if run["status"] == "QUEUED" and run.get("wake_at"):
            facts.append(("delayed until", h(short_time(run["wake_at"]))))
        if run.get("deadline_at"):
            facts.append(
                ("deadline", f'<span id="run-deadline">{h(short_time(run["deadline_at"]))}</span>')
            )
        if run.get("recoveries"):
            facts.append(("recoveries", h(run["recoveries"])))
        if run.get("parent_run_id"):
            parent = h(run["parent_run_id"])
            task = f" (task {h(run['parent_task'])})" if run.get("parent_task") else ""
            facts.append(
                (
                    "parent run",
                    f'<a id="parent-run" href="/runs/{parent}"><code>{parent}</code></a>{task}',
                )
            )
        usage = usage_line(run.get("usage"))
        if usage:
            facts.append(("usage", f'<span id="run-usage">{h(usage)}</span>'))
        dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
        values = "".join(
            json_block(name, run.get(name), f"/runs/{run_id}/values/{name}", open_=True)
            for name in ("payload", "output", "error")
            if run.get(name) is not None
        )
        flat = list(walk(tasks))
        log_html = ""
        if logs:
            lines = "".join(
                f"<tr><td>{h(short_time(line['created_at']))}</td><td>{h(line['level'])}</td>"
                f"<td>{h(line['message'])}</td>"
                f"<td>{h(json.dumps(line['fields'])) if line.get('fields') else ''}</td></tr>"
                for line in logs
            )
            log_html = f'<h2>Logs</h2><table class="logs">{lines}</table>'
        body = (
            f'<h1>Run <code id="run-id">{h(run_id)}</code></h1>'
            + (f'<span id="run-live" data-live="{h(live)}"></span>' if live else "")
            + f'<div class="actions">{"".join(actions)}</div>'
            f'<dl class="facts">{dl}</dl>{values}'
            f"{child_runs(run.get('child_runs') or [])}"
            f"{self.streams(run_id, run.get('streams') or [])}"
            f"<h2>Timeline</h2>{timeline(run, flat)}"
            f"<h2>Tasks <small>({len(flat)})</small></h2>"
            f'<div class="tasks" data-run="{h(run_id)}">'
            f"{task_nodes(run_id, tasks) or '<p>no tasks</p>'}</div>"
            f"{log_html}"
        )
        return self.layout(f"Run {run_id}", body)

    def streams(self, run_id: str, found: list[dict[str, Any]]) -> str:
        """The run's streams (io.stream), each with its chunk count and a link to its chunks."""
        if not found:
            return ""
        rows = "".join(
            f'<tr class="stream" data-stream="{h(s["stream"])}"><td>'
            f'<a href="/runs/{h(run_id)}/streams/{h(quote(s["stream"], safe=""))}">'
            f"<code>{h(s['stream'])}</code></a></td><td>{h(s['chunks'])}</td>"
            f"<td>{h(short_time(s['last_at']))}</td>"
            f'<td><code class="cli">{h(self.cli("runs", "stream", run_id, s["stream"]))}</code>'
            "</td></tr>"
            for s in found
        )
        return (
            f'<h2>Streams <small>({len(found)})</small></h2><table id="streams">'
            "<thead><tr><th>Stream</th><th>Chunks</th><th>Last written (UTC)</th>"
            f"<th>Follow it</th></tr></thead><tbody>{rows}</tbody></table>"
        )

    # -- trigger ---------------------------------------------------------------------------------

    def trigger(
        self,
        jobs: list[dict[str, Any]],
        form: dict[str, str],
        error: str | None = None,
    ) -> str:
        chosen = form.get("job") or (jobs[0]["job_id"] if jobs else "")
        options = "".join(
            f"<option{' selected' if j['job_id'] == chosen else ''}>{h(j['job_id'])}</option>"
            for j in jobs
        )
        schemas = {j["job_id"]: {v["version"]: v["schema"] for v in j["versions"]} for j in jobs}
        error_html = f'<div class="error" id="trigger-error">{h(error)}</div>' if error else ""
        payload = form.get("payload", "")
        body = (
            "<h1>Trigger a run</h1>"
            + (
                "<p>No job is registered in this database: start a worker "
                "(<code>engine run APP</code>) once.</p>"
                if not jobs
                else ""
            )
            + error_html
            + '<form method="post" action="/trigger" id="trigger-form" class="trigger" '
            'data-confirm="Trigger this run?">'
            f'<input type="hidden" name="csrf" value="{h(self.csrf)}">'
            f'<label>Job <select name="job" id="job">{options}</select></label>'
            f'<label>Version <input name="version" id="version" value="{h(form.get("version"))}" '
            'placeholder="default: where a trigger goes"></label>'
            '<label>Idempotency key <input name="idempotency_key" id="key" '
            f'value="{h(form.get("idempotency_key"))}"></label>'
            '<label>Payload (JSON) <textarea name="payload" id="payload" rows=8 cols=60>'
            f"{h(payload)}</textarea></label>"
            '<p>CLI: <code class="cli" id="trigger-cli" '
            f'data-database="{h(self.cli_database)}"></code></p>'
            '<button type="submit">Trigger</button></form>'
            "<h2>Payload schema</h2>"
            f'<pre id="schema" class="schema"></pre>'
            f'<script type="application/json" id="schemas">{script_json(schemas)}</script>'
        )
        return self.layout("Trigger", body)

    # -- jobs and workers ------------------------------------------------------------------------

    def overview(self, ov: Overview) -> str:
        jobs = []
        for job in ov.jobs:
            job_id = job["job_id"]
            rows = "".join(
                f"<tr><td>{h(v['version'])}</td><td>{h(short_time(v['registered_at']))}</td>"
                f"<td>{len(v['workers'])} {h(', '.join(v['workers']))}</td><td>"
                + (
                    json_block(
                        "payload schema",
                        v["schema"],
                        f"/jobs/{quote(job_id, safe='')}/versions/"
                        f"{quote(v['version'], safe='')}/schema",
                    )
                    if v["schema"]
                    else "any JSON"
                )
                + "</td></tr>"
                for v in job["versions"]
            )
            recent = "".join(run_row(r) for r in job["recent"])
            planned = schedule_table(ov.schedules.get(job_id, []))
            trigger = (
                ""
                if self.read_only
                else f' <a href="/trigger?{h(urlencode({"job": job_id}))}">trigger</a>'
            )
            jobs.append(
                f'<section class="job" data-job="{h(job_id)}"><h2>{h(job_id)}{trigger} '
                f'<small><a href="/?{h(urlencode({"job": job_id}))}">all runs</a></small></h2>'
                "<table><thead><tr><th>Version</th><th>Registered (UTC)</th>"
                f"<th>Live workers</th><th>Payload</th></tr></thead><tbody>{rows}</tbody></table>"
                f'{planned}<table class="runs"><tbody>{recent}</tbody></table></section>'
            )
        workers = "".join(
            f'<tr data-worker="{h(w["worker_id"])}"><td><code>{h(w["worker_id"])}</code></td>'
            f"<td>{h(w['host'])}</td><td>{h(w['pid'])}</td>"
            f"<td>{h(', '.join(w.get('jobs') or []))}</td>"
            f"<td>{h(short_time(w['started_at']))}</td>"
            f"<td>{h(short_time(w['last_seen_at']))}</td>"
            f"<td>{h(short_time(w['expires_at']))}</td><td>"
            + " ".join(
                f'<a href="/runs/{h(r)}"><code>{h(r[:12])}</code></a>'
                for r in ov.running.get(w["worker_id"], [])
            )
            + "</td></tr>"
            for w in ov.workers
        )
        waiting = "".join(
            f'<tr><td><a href="/runs/{h(w["run_id"])}"><code>{h(w["run_id"])}</code></a></td>'
            f"<td>{h(w['job_id'])}</td><td><code>{h(w['key'])}</code> ({h(w['kind'])})</td><td>"
            + (
                f"poll by {h(w['poller'])}, next {h(short_time(w['next_poll_at']))}"
                if w["poller"]
                else f"until {h(short_time(w['due_at']))}"
            )
            + "</td></tr>"
            for w in ov.waiting
        )
        body = (
            "<h1>Jobs</h1>"
            + ("".join(jobs) or "<p>no job registered</p>")
            + "<h1>Live workers</h1>"
            + (
                '<table class="workers"><thead><tr><th>Worker</th><th>Host</th><th>PID</th>'
                "<th>Jobs</th><th>Started</th><th>Last heartbeat</th><th>Lease until</th>"
                f"<th>Running</th></tr></thead><tbody>{workers}</tbody></table>"
                if workers
                else "<p>no live worker</p>"
            )
            + "<h1>Waiting runs</h1>"
            + (
                '<table class="waiting"><thead><tr><th>Run</th><th>Job</th><th>Waits on</th>'
                f"<th>Until</th></tr></thead><tbody>{waiting}</tbody></table>"
                if waiting
                else "<p>no run is waiting</p>"
            )
        )
        return self.layout("Jobs and workers", body)

    def message(self, title: str, text: str) -> str:
        return self.layout(title, f"<h1>{h(title)}</h1><p>{h(text)}</p>")


def filter_params(where: RunFilter) -> dict[str, str]:
    pairs = {
        "job": where.job,
        "status": where.status,
        "version": where.version,
        "q": where.query,
        "from": where.since_text if where.since else None,
        "to": where.until_text if where.until else None,
    }
    return {k: v for k, v in pairs.items() if v}


def schedule_table(found: list[dict[str, Any]]) -> str:
    """A job's schedules: when each fires next (or that it is paused), its last tick."""
    if not found:
        return ""
    rows = "".join(
        f'<tr class="schedule" data-expression="{h(s["expression"])}">'
        f"<td><code>{h(s['expression'])}</code> {h(s['timezone'])}</td>"
        f"<td>{'<strong>paused</strong>' if s['paused'] else h(short_time(s['next_fire_at']))}</td>"
        f"<td>{h(short_time(s['last_tick_at']))}"
        + (
            f' <a href="/runs/{h(s["last_run_id"])}"><code>{h(s["last_run_id"][:12])}</code></a>'
            if s.get("last_run_id")
            else ""
        )
        + f"</td><td>{h(s['missed'])}</td><td>{h(s['job_version'])}</td></tr>"
        for s in found
    )
    return (
        '<table class="schedules"><thead><tr><th>Schedule</th><th>Next fire (UTC)</th>'
        "<th>Last tick (UTC)</th><th>Missed ticks</th><th>Version</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )


def child_runs(children: list[dict[str, Any]]) -> str:
    """The runs this one started with `io.invoke`, each linked to its own page."""
    if not children:
        return ""
    rows = "".join(
        f'<tr class="child-run"><td><a href="/runs/{h(c["id"])}"><code>{h(c["id"])}</code></a></td>'
        f"<td>{h(c['task'])}</td><td>{h(c['job_id'])}</td><td>{h(c['job_version'])}</td>"
        f"<td>{status_badge(c['status'])}</td><td>{h(short_time(c['created_at']))}</td></tr>"
        for c in children
    )
    return (
        f'<h2>Child runs <small>({len(children)})</small></h2><table id="child-runs" class="runs">'
        "<thead><tr><th>Run</th><th>Task</th><th>Job</th><th>Version</th><th>Status</th>"
        f"<th>Created (UTC)</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def run_row(run: dict[str, Any]) -> str:
    run_id = h(run["id"])
    waits = (
        f' <small class="waits">{h(run["waiting_for"])}</small>' if run.get("waiting_for") else ""
    )
    return (
        f'<tr data-id="{run_id}" data-status="{h(run["status"])}">'
        f"<td>{status_badge(run['status'])}{waits}</td>"
        f'<td><a href="/runs/{run_id}"><code>{run_id}</code></a></td>'
        f"<td>{h(run['job_id'])}</td><td>{h(run['job_version'])}</td>"
        f"<td>{h(short_time(run['created_at']))}</td>"
        f"<td>{h(fmt_duration(duration(run)))}</td></tr>"
    )


def status_badge(status: str) -> str:
    return f'<span class="status s-{h(status)}">{h(status)}</span>'


def json_text(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def json_block(label: str, value: Any, download: str, open_: bool = False) -> str:
    """A collapsible view of a JSON value: cut at SHOWN_LIMIT, with the whole value offered as
    a download. Untruncated values are turned into a collapsible tree by app.js."""
    text = json_text(value)
    size = len(text.encode("utf-8", errors="surrogatepass"))
    cut = len(text) > SHOWN_LIMIT
    shown = text[:SHOWN_LIMIT] if cut else text
    note = (
        f' <span class="truncated">truncated at {SHOWN_LIMIT // 1024} KB of {size:,} bytes: '
        f'<a href="{h(download)}" download>download the whole value</a></span>'
        if cut
        else f' <a class="dl" href="{h(download)}" download>download</a>'
    )
    return (
        f'<details class="json"{" open" if open_ else ""} data-truncated="{int(cut)}">'
        f"<summary>{h(label)} <small>{size:,} bytes</small></summary>{note}"
        f"<pre>{h(shown)}</pre></details>"
    )


def usage_line(found: dict[str, Any] | None, currency: str = "USD") -> str:
    """Models, tokens and cost of a task (its subtasks included) or a run (engine.usage)."""
    if not found or not found.get("calls"):
        return ""
    models = ", ".join(found.get("models") or [])
    calls = f"{found['calls']} call{'s' if found['calls'] > 1 else ''}"
    text = summary_text(found, found.get("currency", currency))
    return " · ".join(part for part in (calls, models, text) if part)


def walk(tasks: list[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    for task in tasks:
        yield task
        yield from walk(task["children"])


def task_nodes(run_id: str, tasks: list[dict[str, Any]]) -> str:
    """The task tree: each task's line, and its children. A task's body (its facts and
    values: task_body) is fetched by app.js when it is first opened, from
    /runs/RUN/tasks/ID, so that a run of 1,000 tasks is a page of 1,000 lines, not of 3,000
    JSON values."""
    out = []
    for task in tasks:
        children = task_nodes(run_id, task["children"])
        usage = usage_line(task.get("usage"))
        if usage:
            usage = f" <span class=usage>{h(usage)}</span>"
        attempts = task["attempts"]
        out.append(
            f'<details class="task" data-task-id="{h(task["id"])}" data-key="{h(task["key"])}">'
            f"<summary>{status_badge(task['status'])} <code>{h(task['key'])}</code> "
            f"<span class=name>{h(task['name'])}</span> "
            f"<span class=dur>{h(fmt_duration(duration(task)))}</span>"
            f"{usage}{' ×' + h(attempts) if attempts and attempts > 1 else ''}</summary>"
            f"{f'<div class=children>{children}</div>' if children else ''}</details>"
        )
    return "".join(out)


def task_body(run_id: str, task: dict[str, Any]) -> str:
    """What an opened task shows: its kind, attempts and times, and its values."""
    base = f"/runs/{run_id}/tasks/{task['id']}/values"
    values = "".join(
        json_block(name, task.get(name), f"{base}/{name}")
        for name in ("params", "output", "error")
        if task.get(name) is not None
    )
    return (
        f"<small>kind {h(task['kind'])} · attempts {h(task['attempts'])} · "
        f"started {h(short_time(task['started_at']))} · "
        f"completed {h(short_time(task['completed_at']))}</small>{values}"
    )


def timeline(run: dict[str, Any], tasks: list[dict[str, Any]]) -> str:
    """A waterfall of the run and each task against wall-clock time, from the run's creation.

    Waits and polls are spans during which the run was suspended (no worker held it); they are
    drawn hatched and labelled so.
    """
    t0 = run["created_at"].timestamp()
    ends = [t0]
    run_start = _ts(run["started_at"])
    if run_start is not None:
        ends.append(run_start + (duration(run) or 0))
    for task in tasks:
        start = _ts(task["started_at"])
        if start is not None:
            ends.append(start + (duration(task) or 0))
    span = max(max(ends) - t0, 1e-3)

    def bar(label: str, start: float | None, length: float | None, css: str, title: str) -> str:
        if start is None:
            return ""
        # Fractions of the track (CSS places the bar): three elements a lane, no more, as a
        # run of 1,000 tasks draws 1,000 lanes.
        left = (start - t0) / span
        width = min(max((length or 0) / span, 0.004), 1 - left)
        return (
            f'<div class="lane" title="{h(title)}"><span>{h(label)}</span>'
            f'<i class="bar {css}" style="--l:{left:.5f};--w:{width:.5f}"></i></div>'
        )

    queued = (_ts(run["started_at"]) or t0) - t0
    lanes = [
        bar("queued", t0, queued, "queued", f"queued {fmt_duration(queued)}"),
        bar(
            "run",
            run_start,
            duration(run),
            f"s-{run['status']}",
            f"run {run['status']} {fmt_duration(duration(run))}",
        ),
    ]
    for task in tasks:
        suspended = task["kind"] in SUSPENDED_KINDS or task["status"] == "WAITING"
        css = "suspended" if suspended else f"s-{task['status']}"
        what = "suspended" if suspended else task["status"]
        indent = "· " * task["depth"]
        lanes.append(
            bar(
                f"{indent}{task['key']}",
                _ts(task["started_at"]),
                duration(task),
                css,
                f"{task['key']} ({task['kind']}) {what} {fmt_duration(duration(task))}",
            )
        )
    return (
        f'<div class="timeline"><div class="scale">0 s <span>{h(fmt_duration(span))}</span></div>'
        f"{''.join(lanes)}</div>"
    )


def _ts(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def short_time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


def script_json(value: Any) -> str:
    """JSON safe inside a <script> element (no "</script>" can close it early)."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
