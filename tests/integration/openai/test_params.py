"""What is recorded versus what is sent: uploads, v1 `file_ids`, secrets, recorded types."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import pytest
from openai.pagination import AsyncCursorPage
from openai.types.beta import Assistant
from support import unique_id

from engine import EngineError, job
from integrations.openai import OpenAI, codec
from integrations.openai import params as P
from integrations.openai.testing import FakeOpenAI

DATA = b"a,b\n1,2\n"
SUMMARY = {"name": "data.csv", "size": len(DATA), "sha256": hashlib.sha256(DATA).hexdigest()}


@pytest.mark.parametrize(
    "make",
    [
        lambda p: p,
        lambda p: str(p),
        lambda p: ("data.csv", DATA),
        lambda p: ("data.csv", io.BytesIO(DATA), "text/csv"),
        lambda p: p.open("rb"),
    ],
    ids=["path", "str", "tuple", "tuple-file", "file-object"],
)
def test_uploads_are_recorded_as_a_summary(tmp_path: Path, make: Any) -> None:
    path = tmp_path / "data.csv"
    path.write_bytes(DATA)
    given = make(path)
    upload = P.Upload(given)
    if hasattr(given, "close"):
        given.close()
    assert upload.summary() == SUMMARY
    assert upload.to_send()[:2] == ("data.csv", DATA)


def test_bytes_upload_and_bad_inputs() -> None:
    assert P.Upload(DATA).summary()["size"] == len(DATA)
    with pytest.raises(EngineError, match="pass a path"):
        P.Upload(42)


def test_an_unreadable_path_fails_only_when_sent(tmp_path: Path) -> None:
    upload = P.Upload(tmp_path / "gone.csv")
    assert upload.summary() == {"name": "gone.csv"}  # a replay needs nothing more
    with pytest.raises(EngineError, match="cannot read"):
        upload.to_send()


def test_v1_file_ids_on_assistants_merge_into_tool_resources() -> None:
    given = {
        "model": "gpt-4o",
        "file_ids": ["f2", "f3"],
        "tool_resources": {"code_interpreter": {"file_ids": ["f1", "f2"]}},
    }
    sent = P.assistant_v2(given)
    assert sent["tool_resources"] == {"code_interpreter": {"file_ids": ["f1", "f2", "f3"]}}
    assert "file_ids" not in sent
    assert given["file_ids"] == ["f2", "f3"]  # the caller's dict is untouched


def test_v1_file_ids_on_messages_become_attachments() -> None:
    given = {"role": "user", "content": "hi", "file_ids": ["f1"]}
    assert P.message_v2(given) == {
        "role": "user",
        "content": "hi",
        "attachments": [{"file_id": "f1", "tools": [{"type": "code_interpreter"}]}],
    }
    thread = P.thread_v2({"thread": {"messages": [given]}})
    assert "file_ids" not in thread["thread"]["messages"][0]
    assert P.messages_v2({"messages": [given]}, "messages")["messages"][0]["attachments"]


def test_recorded_params_drop_headers_and_scrub_the_key() -> None:
    key = "sk-very-secret-key-123"
    recorded = P.record(
        {"thread_id": "t1"},
        {"extra_headers": {"Authorization": key}, "metadata": {"k": key}, "n": (1, 2)},
        key,
    )
    assert recorded == {"thread_id": "t1", "metadata": {"k": "[REDACTED]"}, "n": [1, 2]}


def test_codec_round_trips_pages_and_lists() -> None:
    asst = Assistant.construct(id="a1", created_at=1, model="m", object="assistant", tools=[])
    page = AsyncCursorPage[Assistant].construct(data=[asst], has_more=False)
    stored, name = codec.encode(page, None, "here")
    assert name == "openai.pagination:AsyncCursorPage[openai.types.beta.assistant:Assistant]"
    again = codec.decode(stored, name)
    assert type(again) is AsyncCursorPage[Assistant] and again.data[0].id == "a1"
    stored, name = codec.encode([asst, asst], None, "here")
    assert name == "list[openai.types.beta.assistant:Assistant]"
    assert [type(a) for a in codec.decode(stored, name)] == [Assistant, Assistant]


async def test_a_file_object_upload_through_a_job(
    oai: Any, fake: FakeOpenAI, integration: OpenAI, tmp_path: Path
) -> None:
    path = tmp_path / "data.csv"
    path.write_bytes(DATA)

    @job(id=unique_id("oai-upload"), integrations={"openai": integration})
    async def upload(payload: Any, io: Any, ctx: Any) -> Any:
        with path.open("rb") as fh:
            done = await io.openai.files.create_and_wait_for_processing(
                "upload", file=fh, purpose="assistants"
            )
        return done.status

    run = await oai.run(upload)
    assert run["status"] == "COMPLETED", run["error"]
    assert run["output"] == "processed"
    assert (await oai.task(run["id"], "upload:create"))["params"] == {
        "file": SUMMARY,
        "purpose": "assistants",
    }
    assert DATA.decode() not in oai.dump()
