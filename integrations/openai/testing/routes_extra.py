"""More of the fake's routes: fine-tuning jobs, image edits and variations, model deletion.

A fine-tuning job is ``validating_files`` for the first half of ``run_seconds``, ``running`` for
the second, then ``succeeded`` (or ``fake.next_fine_tune_status``: ``failed``, ``cancelled``),
creating its model ``ft:<base>:fake-org::<suffix>``; ``fake.hold("fine_tuning")`` keeps jobs
running until released. Every change of status adds an event.
"""

from __future__ import annotations

import time
from typing import Any

from .faults import FakeError, not_found
from .routes import MODELS, Request, paginate, route
from .state import FakeState, public

FINE_TUNE_DONE = frozenset({"succeeded", "failed", "cancelled"})


def _event(state: FakeState, job: dict[str, Any], message: str, level: str = "info") -> None:
    state.fine_tune_events[job["id"]].append(
        {
            "id": state.new_id("ftevent"),
            "object": "fine_tuning.job.event",
            "created_at": state.wall(state.now()),
            "level": level,
            "message": message,
            "data": {},
            "type": "message",
        }
    )


def _advance(state: FakeState, job: dict[str, Any]) -> dict[str, Any]:
    if job["status"] in FINE_TUNE_DONE:
        return public(job)
    if state._holding("fine_tuning", job):
        if job["status"] != "running":
            job["status"] = "running"
            _event(state, job, "Fine-tuning job started")
        return public(job)
    elapsed = state.now() - job["_t0"]
    span = state.run_seconds
    if elapsed < span / 2:
        return public(job)
    if job["status"] == "validating_files":
        job["status"] = "running"
        _event(state, job, "Fine-tuning job started")
    if elapsed < span:
        return public(job)
    _finish(state, job, job["_outcome"])
    return public(job)


def _finish(state: FakeState, job: dict[str, Any], status: str) -> None:
    job["status"] = status
    job["finished_at"] = state.wall(state.now())
    if status == "succeeded":
        name = f"ft:{job['model']}:fake-org::{job['id'][-10:]}"
        job["fine_tuned_model"] = name
        job["trained_tokens"] = 1000
        state.tuned_models[name] = {
            "id": name,
            "object": "model",
            "created": job["finished_at"],
            "owned_by": "user-fake",
        }
        _event(state, job, "The job has successfully completed")
    elif status == "failed":
        job["error"] = {
            "code": "invalid_training_file",
            "param": "training_file",
            "message": "The fake was told to fail this fine-tuning job.",
        }
        _event(state, job, "The job failed", "error")
    else:
        _event(state, job, "The job was cancelled")


def _job(state: FakeState, job_id: str) -> dict[str, Any]:
    if job_id not in state.fine_tunes:
        raise not_found("fine-tuning job", job_id)
    return state.fine_tunes[job_id]


@route("POST", "/v1/fine_tuning/jobs")
def create_fine_tune(req: Request) -> Any:
    body = req.json()
    model, training = req.require("model"), req.require("training_file")
    state = req.state
    with state.lock:
        if training not in state.files:
            raise FakeError(
                400,
                f"invalid training_file: {training}",
                param="training_file",
                code="invalid_training_file",
            )
        job_id = state.new_id("ftjob")
        now = state.now()
        state.fine_tunes[job_id] = {
            "id": job_id,
            "object": "fine_tuning.job",
            "created_at": state.wall(now),
            "model": model,
            "training_file": training,
            "validation_file": body.get("validation_file"),
            "status": "validating_files",
            "fine_tuned_model": None,
            "finished_at": None,
            "error": None,
            "hyperparameters": body.get("hyperparameters")
            or {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"},
            "organization_id": "org-fake",
            "result_files": [],
            "seed": body.get("seed") or 42,
            "trained_tokens": None,
            "estimated_finish": None,
            "integrations": [],
            "metadata": body.get("metadata"),
            "suffix": body.get("suffix"),
            "_t0": now,
            "_outcome": state.next_fine_tune_status or "succeeded",
        }
        state.next_fine_tune_status = None
        state.fine_tune_events[job_id] = []
        _event(state, state.fine_tunes[job_id], f"Created fine-tuning job: {job_id}")
        return public(state.fine_tunes[job_id])


@route("GET", "/v1/fine_tuning/jobs")
def list_fine_tunes(req: Request) -> Any:
    with req.state.lock:
        jobs = [_advance(req.state, j) for j in req.state.fine_tunes.values()]
        return paginate(jobs, req.query)


@route("GET", "/v1/fine_tuning/jobs/{job_id}")
def get_fine_tune(req: Request) -> Any:
    with req.state.lock:
        return _advance(req.state, _job(req.state, req.params["job_id"]))


@route("POST", "/v1/fine_tuning/jobs/{job_id}/cancel")
def cancel_fine_tune(req: Request) -> Any:
    state = req.state
    with state.lock:
        job = _job(state, req.params["job_id"])
        _advance(state, job)
        if job["status"] in FINE_TUNE_DONE:
            raise FakeError(400, f"Cannot cancel a job with status '{job['status']}'.")
        _finish(state, job, "cancelled")
        return public(job)


@route("GET", "/v1/fine_tuning/jobs/{job_id}/events")
def fine_tune_events(req: Request) -> Any:
    state = req.state
    with state.lock:
        _advance(state, _job(state, req.params["job_id"]))
        # Newest first, as OpenAI lists them.
        events = list(reversed(state.fine_tune_events[req.params["job_id"]]))
        return paginate(events, {**req.query, "order": "asc"})


@route("DELETE", "/v1/models/{model}")
def delete_model(req: Request) -> Any:
    name = req.params["model"]
    with req.state.lock:
        if name in MODELS:
            raise FakeError(
                403,
                "You have insufficient permissions to delete this model.",
                code="insufficient_permissions",
            )
        if req.state.tuned_models.pop(name, None) is None:
            raise not_found("model", name)
    return {"id": name, "object": "model", "deleted": True}


def _images(req: Request, what: str) -> Any:
    upload = req.form.get("image")
    if not isinstance(upload, tuple):
        raise FakeError(400, "Missing required parameter: 'image'.", param="image")
    if what == "edits" and not req.form.get("prompt"):
        raise FakeError(400, "Missing required parameter: 'prompt'.", param="prompt")
    n = int(req.form.get("n") or 1)
    root = req.base_url.rsplit("/v1", 1)[0]
    return {
        "created": int(time.time()),
        "data": [
            {"url": f"{root}/_fake/images/{what}-{i}.png", "revised_prompt": None}
            for i in range(1, n + 1)
        ],
    }


@route("POST", "/v1/images/edits")
def image_edits(req: Request) -> Any:
    return _images(req, "edits")


@route("POST", "/v1/images/variations")
def image_variations(req: Request) -> Any:
    return _images(req, "variations")
