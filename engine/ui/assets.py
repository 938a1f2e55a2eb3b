"""The dashboard's stylesheet and script: small enough to live here, so there is no build step
and nothing to package besides Python modules."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0; color: #1d2330; background: #f7f8fa; }
header { background: #1d2330; color: #fff; padding: 8px 16px; display: flex; gap: 16px; }
header a { color: #cfe0ff; margin-right: 12px; }
main { padding: 12px 16px; }
code, pre { font: 12px ui-monospace, monospace; }
table { border-collapse: collapse; width: 100%; background: #fff; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #e3e6ea; }
tr.flash { animation: flash 1.5s; }
@keyframes flash { from { background: #fff3b0; } to { background: #fff; } }
.status { padding: 1px 6px; border-radius: 3px; font-size: 12px; font-weight: 600;
  background: #e3e6ea; }
.s-COMPLETED { background: #c8f0d0; } .s-FAILED, .s-ERRORED { background: #f8c9c9; }
.s-CANCELED { background: #f5e3b3; } .s-RUNNING { background: #cbdcff; }
.s-WAITING { background: #cdeff5; } .s-QUEUED { background: #e3e6ea; }
.filters { display: flex; gap: 6px; margin: 8px 0; flex-wrap: wrap; }
.badge { background: #f5e3b3; color: #1d2330; padding: 0 6px; border-radius: 3px; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; }
dt { color: #667; }
details.json { margin: 6px 0; background: #fff; border: 1px solid #e3e6ea; padding: 4px 8px; }
details.json pre { max-height: 480px; overflow: auto; margin: 4px 0; }
.truncated { color: #a33; }
details.task { margin: 2px 0 2px 0; border-left: 2px solid #e3e6ea; padding-left: 8px; }
details.task summary { cursor: pointer; }
/* A run of 1,000 tasks: the browser lays out and paints only the lanes and tasks in view. */
.tasks > details.task { content-visibility: auto; contain-intrinsic-size: auto 22px; }
.task-body { padding: 4px 0 4px 12px; }
.name { color: #667; } .dur { color: #667; font-size: 12px; }
.usage { color: #2a5d9f; font-size: 12px; }
.waits { color: #667; }
.timeline { background: #fff; border: 1px solid #e3e6ea; padding: 6px; }
.scale { display: flex; justify-content: space-between; color: #667; font-size: 12px;
  margin-left: 220px; }
.lane { position: relative; height: 18px; display: flex; align-items: center;
  background: linear-gradient(to right, transparent 220px, #f2f3f5 220px) no-repeat
  center / 100% 12px; content-visibility: auto; contain-intrinsic-size: auto 18px; }
.lane > span { width: 220px; overflow: hidden; white-space: nowrap; text-overflow: ellipsis;
  font: 12px ui-monospace, monospace; }
.bar { position: absolute; top: 3px; height: 12px; border-radius: 2px;
  left: calc(220px + (100% - 220px) * var(--l)); width: calc((100% - 220px) * var(--w)); }
.bar.queued { background: #d7dae0; }
.bar.suspended { background: repeating-linear-gradient(45deg, #9fd3df, #9fd3df 4px,
  #e6f6f9 4px, #e6f6f9 8px); }
.actions form { margin: 6px 0; }
button { cursor: pointer; } button.danger { color: #a11; }
code.cli { background: #eef0f3; padding: 2px 4px; }
.error { background: #fde2e2; border: 1px solid #e9a3a3; padding: 8px; margin: 8px 0; }
form.trigger label { display: block; margin: 6px 0; }
.banner { position: sticky; top: 0; z-index: 1; background: #fde2e2; color: #611;
  border-bottom: 1px solid #e9a3a3; padding: 8px 16px; font-weight: 600; }
details.task > .children { padding-left: 12px; }
.task-body:empty { display: none; }
.jtree { margin-left: 14px; } .jtree summary { cursor: pointer; }
.jtree > div { margin-left: 14px; }
"""

JS = r"""
"use strict";

// Every action form asks first.
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) event.preventDefault();
});

// A live page's event stream. The server says when it cannot read the database (`outage`)
// and when it can again (`recovered`): a banner tells the reader the page is not current.
function live(url) {
  const source = new EventSource(url);
  source.addEventListener("outage", (event) => {
    let banner = document.getElementById("db-banner");
    if (!banner) {
      banner = document.createElement("div");
      banner.id = "db-banner";
      banner.className = "banner";
      document.body.prepend(banner);
    }
    const reason = JSON.parse(event.data).reason;
    banner.textContent = "The database is not answering (" + reason + "): this page is not " +
      "up to date. It will catch up by itself when the database is back.";
  });
  source.addEventListener("recovered", () => {
    const banner = document.getElementById("db-banner");
    if (banner) banner.remove();
  });
  return source;
}

// Live runs table: rows arrive over server-sent events; a row we have is replaced in place.
const table = document.getElementById("runs");
if (table && table.dataset.live) {
  const body = table.tBodies[0];
  const source = live(table.dataset.live);
  source.addEventListener("run", (event) => {
    const data = JSON.parse(event.data);
    const holder = document.createElement("tbody");
    holder.innerHTML = data.html;
    const row = holder.firstElementChild;
    const old = body.querySelector(`tr[data-id="${CSS.escape(data.id)}"]`);
    if (old) {
      if (old.dataset.status !== data.status) row.classList.add("flash");
      old.replaceWith(row);
    } else {
      row.classList.add("flash");
      body.prepend(row);
      const empty = document.querySelector(".empty");
      if (empty) empty.remove();
    }
  });
  window.addEventListener("beforeunload", () => source.close());
}

// A JSON value shown whole becomes a collapsible tree the first time it is opened.
function tree(value, name) {
  if (value === null || typeof value !== "object") {
    const line = document.createElement("div");
    line.textContent = (name === undefined ? "" : name + ": ") + JSON.stringify(value);
    return line;
  }
  const node = document.createElement("details");
  node.className = "jtree";
  node.open = true;
  const keys = Object.keys(value);
  const summary = document.createElement("summary");
  const shape = Array.isArray(value) ? `[${keys.length}]` : `{${keys.length}}`;
  summary.textContent = (name === undefined ? "" : name + ": ") + shape;
  node.appendChild(summary);
  for (const key of keys) node.appendChild(tree(value[key], key));
  return node;
}
function enhance(root) {
  root.querySelectorAll("details.json").forEach((details) => {
    const build = () => {
      if (details.dataset.built || details.dataset.truncated === "1" || !details.open) return;
      details.dataset.built = "1";
      const pre = details.querySelector("pre");
      try { pre.replaceWith(tree(JSON.parse(pre.textContent))); } catch (e) { /* keep text */ }
    };
    details.addEventListener("toggle", build);
    build();
  });
}
enhance(document);

// A task's body (its facts and values) is fetched the first time it is opened: a run of
// 1,000 tasks is sent as 1,000 lines. `reopen` holds the values a reader had open before a
// live update replaced the page, to open them again once their task's body is back.
let reopen = new Set();
// A task by its id, a value by its task and label: neither changes as the run goes on.
const keyOf = (d) => {
  const task = d.dataset.taskId ? d : d.closest("details.task");
  const label = d.dataset.taskId ? "" : d.querySelector("summary").firstChild.textContent;
  return (task ? task.dataset.taskId : "-") + "/" + label;
};
async function loadBody(task) {
  let body = task.querySelector(":scope > .task-body");
  if (body && body.dataset.loaded) return;
  if (!body) {
    body = document.createElement("div");
    body.className = "task-body";
    task.querySelector(":scope > summary").after(body);
  }
  body.dataset.loaded = "1";
  const run = encodeURIComponent(task.closest(".tasks").dataset.run);
  const src = `/runs/${run}/tasks/${task.dataset.taskId}`;
  try {
    const response = await fetch(src, { cache: "no-store" });
    if (!response.ok) throw new Error(String(response.status));
    body.innerHTML = await response.text();
  } catch (e) {
    delete body.dataset.loaded;  // opened again, it tries again
    body.textContent = "could not load this task: " + e.message;
    return;
  }
  body.querySelectorAll("details.json").forEach((d) => {
    if (reopen.has(keyOf(d))) d.open = true;
  });
  enhance(body);
}
document.addEventListener("toggle", (event) => {
  const task = event.target;
  if (task.matches && task.matches("details.task") && task.open) loadBody(task);
}, true);
const loadOpened = () => document.querySelectorAll("details.task[open]").forEach(loadBody);

// A run still under way: when the server says it changed, the page's content is fetched again
// and swapped in, keeping open what the reader opened.
const runLive = document.getElementById("run-live");
if (runLive) {
  const source = live(runLive.dataset.live);
  const opened = () => new Set(
    [...document.querySelectorAll("main details.task[open], main details.json[open]")].map(keyOf));
  source.addEventListener("changed", async () => {
    const keep = opened();
    const response = await fetch(window.location.href, { cache: "no-store" });
    if (!response.ok) return;
    const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
    const main = fresh.querySelector("main");
    main.querySelectorAll("details.task, details.json").forEach((d) => {
      if (keep.has(keyOf(d))) d.open = true;
    });
    reopen = keep;
    document.querySelector("main").replaceWith(main);
    enhance(document);
    loadOpened();
  });
  source.addEventListener("final", () => source.close());
  window.addEventListener("beforeunload", () => source.close());
}

// The trigger form: the job's payload schema and the CLI command that does the same.
const triggerForm = document.getElementById("trigger-form");
if (triggerForm) {
  const schemas = JSON.parse(document.getElementById("schemas").textContent);
  const quote = (s) => /^[\w@%+=:,./-]+$/.test(s) ? s : "'" + s.replace(/'/g, "'\"'\"'") + "'";
  const update = () => {
    const job = triggerForm.job.value;
    const version = triggerForm.version.value.trim();
    const versions = schemas[job] || {};
    const names = Object.keys(versions);
    const shown = version in versions ? version : names[names.length - 1];
    const schema = shown === undefined ? null : versions[shown];
    document.getElementById("schema").textContent =
      schema ? JSON.stringify(schema, null, 2) : "(no schema registered: any JSON is accepted)";
    const args = ["engine", "trigger", quote(job)];
    const payload = triggerForm.payload.value.trim();
    if (payload) args.push("--payload", quote(payload));
    if (version) args.push("--version", quote(version));
    const key = triggerForm.idempotency_key.value.trim();
    if (key) args.push("--idempotency-key", quote(key));
    const cli = document.getElementById("trigger-cli");
    cli.textContent = args.join(" ") + cli.dataset.database;
  };
  triggerForm.addEventListener("input", update);
  triggerForm.addEventListener("change", update);
  update();
}
"""


async def css(request: Request) -> Response:
    return Response(CSS, media_type="text/css", headers={"cache-control": "max-age=300"})


async def js(request: Request) -> Response:
    return Response(JS, media_type="text/javascript", headers={"cache-control": "max-age=300"})
