"""`io.openai`: the method namespaces, mirroring openai-python's (`io.openai.beta.threads.runs`).

Every method is `(key, *ids, **params)` with the ids in the seed's order (thread, then message or
run) and the params of the openai-python method of the same path. A waiting method records its
create under `f"{key}:create"` and waits under `key` (so the row at `key` holds what the call
returned); `wait_for_completion` only waits, under `key`.
"""

from __future__ import annotations

import builtins
from typing import Any

from openai.pagination import AsyncCursorPage, AsyncPage
from openai.types import CreateEmbeddingResponse, FileObject, ImagesResponse, Model, ModelDeleted
from openai.types.beta import Assistant, AssistantDeleted, Thread, ThreadDeleted
from openai.types.beta.threads import Message, Run
from openai.types.chat import ChatCompletion
from openai.types.responses import Response

from engine import EngineError

from . import params as P
from .calls import Caller
from .fine_tuning import FineTuning
from .pollers import FILE_DONE, RESPONSE_DONE


def _create_key(key: str) -> str:
    return f"{key}:create"


_SCHEDULE = ("poll_interval", "max_poll_interval", "poll_backoff")


def _schedule(params: dict[str, Any]) -> dict[str, Any]:
    """This wait's own poll schedule, taken out of the params (they are not OpenAI's)."""
    return {name: params.pop(name) for name in _SCHEDULE if name in params}


class _Namespace:
    def __init__(self, caller: Caller) -> None:
        self._c = caller

    async def _thread_list_all(
        self, key: str, listing: str, thread_id: str, params: dict[str, Any]
    ) -> builtins.list[Any]:
        """Every item `listing` (as "beta.threads.runs.list") returns, all pages in one task."""
        operation = f"{listing}_all"
        ids = P.check_ids(operation, thread_id=thread_id)
        found = await self._c.request(
            key, operation, ids, params, post=False, method=listing, paginate=True
        )
        return list(found)


class Files(_Namespace):
    async def create(self, key: str, *, file: P.FileInput, **params: Any) -> FileObject:
        """Uploads a file (recorded as name, size and sha256, not its bytes)."""
        upload = P.Upload(file)
        recorded = P.record({}, {"file": upload.summary(), **params}, self._c.integration.secret())
        sent = {**params, "file": upload}
        return await self._c.request(
            key, "files.create", {}, params, post=True, sent=sent, recorded=recorded
        )

    async def create_and_wait_for_processing(
        self,
        key: str,
        *,
        file: P.FileInput,
        poll_timeout: float | None = None,
        poll_interval: float | None = None,
        max_poll_interval: float | None = None,
        poll_backoff: float | None = None,
        **params: Any,
    ) -> FileObject:
        """Uploads under `key:create`, then waits under `key` until `processed`, `error` or
        `deleted` (at once when the upload is already processed)."""
        created = await self.create(_create_key(key), file=file, **params)
        return await self._c.wait(
            key,
            "files.create_and_wait_for_processing",
            "file",
            {"file_id": created.id},
            FileObject,
            poll_timeout,
            current=created,
            done=FILE_DONE,
            poll_interval=poll_interval,
            max_poll_interval=max_poll_interval,
            poll_backoff=poll_backoff,
        )

    async def wait_for_processing(
        self, key: str, file_id: str, *, poll_timeout: float | None = None,
        poll_interval: float | None = None, max_poll_interval: float | None = None,
        poll_backoff: float | None = None,
    ) -> FileObject:  # fmt: skip
        """Waits under `key` until the file is `processed`, `error` or `deleted`."""
        ids = P.check_ids("files.wait_for_processing", file_id=file_id)
        return await self._c.wait(
            key, "files.wait_for_processing", "file", ids, FileObject, poll_timeout,
            poll_interval=poll_interval, max_poll_interval=max_poll_interval,
            poll_backoff=poll_backoff,
        )  # fmt: skip

    async def retrieve(self, key: str, file_id: str) -> FileObject:
        ids = P.check_ids("files.retrieve", file_id=file_id)
        return await self._c.request(key, "files.retrieve", ids, {}, post=False)

    async def list(self, key: str, **params: Any) -> AsyncCursorPage[FileObject]:
        """One page of files (`purpose=`, `limit=`, `after=`, `order=` as OpenAI takes them)."""
        return await self._c.request(key, "files.list", {}, params, post=False)


class Assistants(_Namespace):
    async def create(self, key: str, **params: Any) -> Assistant:
        sent = P.assistant_v2(params)
        return await self._c.request(
            key, "beta.assistants.create", {}, params, post=True, sent=sent
        )

    async def update(self, key: str, assistant_id: str, **params: Any) -> Assistant:
        ids = P.check_ids("beta.assistants.update", assistant_id=assistant_id)
        sent = P.assistant_v2(params)
        return await self._c.request(
            key, "beta.assistants.update", ids, params, post=True, sent=sent
        )

    async def list(self, key: str, **params: Any) -> AsyncCursorPage[Assistant]:
        return await self._c.request(key, "beta.assistants.list", {}, params, post=False)

    async def retrieve(self, key: str, assistant_id: str) -> Assistant:
        ids = P.check_ids("beta.assistants.retrieve", assistant_id=assistant_id)
        return await self._c.request(key, "beta.assistants.retrieve", ids, {}, post=False)

    async def delete(self, key: str, assistant_id: str) -> AssistantDeleted:
        ids = P.check_ids("beta.assistants.delete", assistant_id=assistant_id)
        return await self._c.request(key, "beta.assistants.delete", ids, {}, post=False)

    del_ = delete  # the seed's `del()`


class Messages(_Namespace):
    async def list(self, key: str, thread_id: str, **params: Any) -> AsyncCursorPage[Message]:
        ids = P.check_ids("beta.threads.messages.list", thread_id=thread_id)
        return await self._c.request(key, "beta.threads.messages.list", ids, params, post=False)

    async def list_all(self, key: str, thread_id: str, **params: Any) -> builtins.list[Message]:
        """Every message of the thread (all pages, in one task) as one list."""
        return await self._thread_list_all(key, "beta.threads.messages.list", thread_id, params)

    async def create(self, key: str, thread_id: str, **params: Any) -> Message:
        ids = P.check_ids("beta.threads.messages.create", thread_id=thread_id)
        sent = P.message_v2(params)
        return await self._c.request(
            key, "beta.threads.messages.create", ids, params, post=True, sent=sent
        )

    async def retrieve(self, key: str, thread_id: str, message_id: str) -> Message:
        ids = P.check_ids(
            "beta.threads.messages.retrieve", thread_id=thread_id, message_id=message_id
        )
        return await self._c.request(key, "beta.threads.messages.retrieve", ids, {}, post=False)

    async def update(self, key: str, thread_id: str, message_id: str, **params: Any) -> Message:
        ids = P.check_ids(
            "beta.threads.messages.update", thread_id=thread_id, message_id=message_id
        )
        return await self._c.request(key, "beta.threads.messages.update", ids, params, post=True)


class Runs(_Namespace):
    async def list(self, key: str, thread_id: str, **params: Any) -> AsyncCursorPage[Run]:
        """Every run of the thread (all pages, in one task, as the seed says), as one page."""
        ids = P.check_ids("beta.threads.runs.list", thread_id=thread_id)
        return await self._c.request(
            key, "beta.threads.runs.list", ids, params, post=False, paginate="page"
        )

    async def list_all(self, key: str, thread_id: str, **params: Any) -> builtins.list[Run]:
        """Every run of the thread (all pages, in one task) as one list."""
        return await self._thread_list_all(key, "beta.threads.runs.list", thread_id, params)

    async def create(self, key: str, thread_id: str, **params: Any) -> Run:
        ids = P.check_ids("beta.threads.runs.create", thread_id=thread_id)
        sent = P.messages_v2(params, "additional_messages")
        return await self._c.request(
            key, "beta.threads.runs.create", ids, params, post=True, sent=sent
        )

    async def create_and_wait_for_completion(
        self, key: str, thread_id: str, *, poll_timeout: float | None = None, **params: Any
    ) -> Run:
        """Creates the run under `key:create`, then waits under `key` for a terminal status."""
        schedule = _schedule(params)
        run = await self.create(_create_key(key), thread_id, **params)
        return await self._wait(
            key, "beta.threads.runs.create_and_wait_for_completion", run, poll_timeout,
            **schedule,
        )  # fmt: skip

    async def wait_for_completion(
        self,
        key: str,
        thread_id: str,
        run_id: str,
        *,
        poll_timeout: float | None = None,
        **schedule: float,
    ) -> Run:
        """Waits under `key` until the run is completed, failed, cancelled, expired,
        incomplete or requires_action; never raises on a non-completed status."""
        ids = P.check_ids(
            "beta.threads.runs.wait_for_completion", thread_id=thread_id, run_id=run_id
        )
        chosen = _schedule(schedule)
        if schedule:
            raise EngineError(
                f"beta.threads.runs.wait_for_completion({key!r}): unknown option(s) "
                f"{', '.join(sorted(schedule))}; use poll_timeout, {', '.join(_SCHEDULE)}"
            )
        return await self._c.wait(
            key, "beta.threads.runs.wait_for_completion", "run", ids, Run, poll_timeout,
            **chosen,
        )  # fmt: skip

    async def _wait(
        self, key: str, operation: str, run: Run, timeout: float | None, **schedule: Any
    ) -> Run:
        ids = {"thread_id": run.thread_id, "run_id": run.id}
        return await self._c.wait(key, operation, "run", ids, Run, timeout, **schedule)

    async def retrieve(self, key: str, thread_id: str, run_id: str) -> Run:
        ids = P.check_ids("beta.threads.runs.retrieve", thread_id=thread_id, run_id=run_id)
        return await self._c.request(key, "beta.threads.runs.retrieve", ids, {}, post=False)

    async def cancel(self, key: str, thread_id: str, run_id: str) -> Run:
        ids = P.check_ids("beta.threads.runs.cancel", thread_id=thread_id, run_id=run_id)
        return await self._c.request(key, "beta.threads.runs.cancel", ids, {}, post=True)

    async def submit_tool_outputs(
        self, key: str, thread_id: str, run_id: str, **params: Any
    ) -> Run:
        ids = P.check_ids(
            "beta.threads.runs.submit_tool_outputs", thread_id=thread_id, run_id=run_id
        )
        return await self._c.request(
            key, "beta.threads.runs.submit_tool_outputs", ids, params, post=True
        )


class Threads(_Namespace):
    def __init__(self, caller: Caller) -> None:
        super().__init__(caller)
        self.messages = Messages(caller)
        self.runs = Runs(caller)

    async def create(self, key: str, **params: Any) -> Thread:
        sent = P.messages_v2(params, "messages")
        return await self._c.request(key, "beta.threads.create", {}, params, post=True, sent=sent)

    async def create_and_run(self, key: str, **params: Any) -> Run:
        sent = P.thread_v2(params)
        return await self._c.request(
            key, "beta.threads.create_and_run", {}, params, post=True, sent=sent
        )

    async def create_and_run_until_completion(
        self, key: str, *, poll_timeout: float | None = None, **params: Any
    ) -> Run:
        """Creates thread and run under `key:create`, then waits under `key`."""
        schedule = _schedule(params)
        run = await self.create_and_run(_create_key(key), **params)
        return await self.runs._wait(
            key, "beta.threads.create_and_run_until_completion", run, poll_timeout, **schedule
        )

    async def retrieve(self, key: str, thread_id: str) -> Thread:
        ids = P.check_ids("beta.threads.retrieve", thread_id=thread_id)
        return await self._c.request(key, "beta.threads.retrieve", ids, {}, post=False)

    async def update(self, key: str, thread_id: str, **params: Any) -> Thread:
        ids = P.check_ids("beta.threads.update", thread_id=thread_id)
        return await self._c.request(key, "beta.threads.update", ids, params, post=True)

    async def delete(self, key: str, thread_id: str) -> ThreadDeleted:
        ids = P.check_ids("beta.threads.delete", thread_id=thread_id)
        return await self._c.request(key, "beta.threads.delete", ids, {}, post=False)

    del_ = delete  # the seed's `del()`


class Beta:
    def __init__(self, caller: Caller) -> None:
        self.assistants = Assistants(caller)
        self.threads = Threads(caller)


class Completions(_Namespace):
    async def create(self, key: str, **params: Any) -> ChatCompletion:
        return await self._c.request(key, "chat.completions.create", {}, params, post=True)


class Chat:
    def __init__(self, caller: Caller) -> None:
        self.completions = Completions(caller)


class Embeddings(_Namespace):
    async def create(self, key: str, **params: Any) -> CreateEmbeddingResponse:
        return await self._c.request(key, "embeddings.create", {}, params, post=True)


class Images(_Namespace):
    async def generate(self, key: str, **params: Any) -> ImagesResponse:
        return await self._c.request(key, "images.generate", {}, params, post=True)

    async def edit(
        self, key: str, *, image: P.FileInput, mask: P.FileInput | None = None, **params: Any
    ) -> ImagesResponse:
        """Edits an image (`image=` and `mask=` as `files.create` takes `file=`: recorded as
        name, size and sha256)."""
        uploads = {"image": P.Upload(image)}
        if mask is not None:
            uploads["mask"] = P.Upload(mask)
        return await self._upload(key, "images.edit", uploads, params)

    async def create_variation(
        self, key: str, *, image: P.FileInput, **params: Any
    ) -> ImagesResponse:
        return await self._upload(
            key, "images.create_variation", {"image": P.Upload(image)}, params
        )

    async def _upload(
        self, key: str, operation: str, uploads: dict[str, P.Upload], params: dict[str, Any]
    ) -> ImagesResponse:
        summaries = {name: upload.summary() for name, upload in uploads.items()}
        recorded = P.record({}, {**summaries, **params}, self._c.integration.secret())
        return await self._c.request(
            key, operation, {}, params, post=True, sent={**params, **uploads}, recorded=recorded
        )


class Models(_Namespace):
    async def list(self, key: str) -> AsyncPage[Model]:
        return await self._c.request(key, "models.list", {}, {}, post=False)

    async def retrieve(self, key: str, model: str) -> Model:
        ids = P.check_ids("models.retrieve", model=model)
        return await self._c.request(key, "models.retrieve", ids, {}, post=False)

    async def delete(self, key: str, model: str) -> ModelDeleted:
        """Deletes a fine-tuned model (OpenAI refuses to delete a base model: 403)."""
        ids = P.check_ids("models.delete", model=model)
        return await self._c.request(key, "models.delete", ids, {}, post=False)

    del_ = delete


class Responses(_Namespace):
    async def create(self, key: str, **params: Any) -> Response:
        return await self._c.request(key, "responses.create", {}, params, post=True)

    async def retrieve(self, key: str, response_id: str) -> Response:
        ids = P.check_ids("responses.retrieve", response_id=response_id)
        return await self._c.request(key, "responses.retrieve", ids, {}, post=False)

    async def create_and_wait_for_completion(
        self, key: str, *, poll_timeout: float | None = None, **params: Any
    ) -> Response:
        """Creates a background response under `key:create` (`background=True` unless given)
        and waits under `key` until completed, failed, cancelled or incomplete."""
        params.setdefault("background", True)
        schedule = _schedule(params)
        created = await self.create(_create_key(key), **params)
        return await self._c.wait(
            key,
            "responses.create_and_wait_for_completion",
            "response",
            {"response_id": created.id},
            Response,
            poll_timeout,
            current=created,
            done=RESPONSE_DONE,
            **schedule,
        )

    async def cancel(self, key: str, response_id: str) -> Response:
        """Cancels a background response (OpenAI refuses others)."""
        ids = P.check_ids("responses.cancel", response_id=response_id)
        return await self._c.request(key, "responses.cancel", ids, {}, post=True)


class OpenAIIO:
    """What a job sees as `io.openai`."""

    def __init__(self, caller: Caller) -> None:
        self.files = Files(caller)
        self.beta = Beta(caller)
        self.chat = Chat(caller)
        self.embeddings = Embeddings(caller)
        self.images = Images(caller)
        self.models = Models(caller)
        self.responses = Responses(caller)
        self.fine_tuning = FineTuning(caller)
