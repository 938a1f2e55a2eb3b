"""Tokens, rate-limit headers and cost: recorded per OpenAI task (engine_task_usage), shown per
task and per run by `runs show`, summed by `engine usage`, priced from the shipped table or the
user's own (ENGINE_PRICES)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import forked
import openai
import pytest
from support import unique_id

from engine import job
from integrations.openai import OpenAI
from integrations.openai.testing import FakeOpenAI

ENGINE = str(Path(sys.executable).parent / "engine")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def cli(db: Path, *args: str, prices: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ENGINE_PRICES"}
    if prices is not None:
        env["ENGINE_PRICES"] = str(prices)
    return forked.run(
        [ENGINE, *args, "--database-url", f"sqlite+aiosqlite:///{db}"],
        text=True,
        timeout=60,
        env=env,
    )


def usage_rows(db: Path) -> dict[str, dict[str, Any]]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute(
            "SELECT t.key, u.* FROM engine_task_usage u JOIN engine_tasks t ON t.id = u.task_id"
        ).fetchall()
    return {r["key"]: dict(r) for r in rows}


def seed_style_job(integration: OpenAI, assistant_id: str) -> Any:
    @job(id=unique_id("oai-usage"), integrations={"openai": integration})
    async def spend(payload: Any, io: Any, ctx: Any) -> Any:
        await io.openai.chat.completions.create(
            "chat", model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
        run = await io.openai.beta.threads.create_and_run_until_completion(
            "thread-run",
            assistant_id=assistant_id,
            thread={"messages": [{"role": "user", "content": "go"}]},
        )

        async def embed(task: Any) -> int:
            done = await io.openai.embeddings.create(
                "embed", model="text-embedding-3-small", input="a b c"
            )
            return len(done.data)

        await io.run_task("nested", embed)
        await io.openai.beta.assistants.retrieve("look", assistant_id)
        return run.status

    return spend


async def test_a_seed_style_run_records_usage_and_cost(
    oai: Any, fake: FakeOpenAI, integration: OpenAI
) -> None:
    with openai.OpenAI(base_url=fake.base_url, api_key="sk-setup", max_retries=0) as client:
        assistant = client.beta.assistants.create(model="gpt-4o")
    fake.set_limits(requests_per_minute=1000, tokens_per_minute=1_000_000)
    fake.set_usage(
        prompt_tokens=1200, completion_tokens=300, cached_tokens=1000, reasoning_tokens=200
    )
    run = await oai.run(seed_style_job(integration, assistant.id))
    assert run["status"] == "COMPLETED", run["error"]

    rows = usage_rows(oai.db_path)
    assert set(rows) == {"chat", "thread-run", "thread-run:create", "embed", "look"}
    chat = rows["chat"]
    assert (chat["provider"], chat["model"]) == ("openai", "gpt-4o-mini")
    assert (
        chat["prompt_tokens"],
        chat["completion_tokens"],
        chat["cached_tokens"],
        chat["reasoning_tokens"],
        chat["total_tokens"],
    ) == (1200, 300, 1000, 200, 1500)
    headers = json.loads(chat["rate_limits"])
    assert headers["x-ratelimit-limit-requests"] == "1000"
    assert headers["x-ratelimit-limit-tokens"] == "1000000"
    assert "x-ratelimit-reset-tokens" in headers
    # The run's tokens come with the wait that saw it finish, not with its create.
    assert rows["thread-run"]["model"] == "gpt-4o"
    assert rows["thread-run"]["total_tokens"] == 1500
    assert rows["thread-run:create"]["total_tokens"] == 0
    assert rows["embed"]["total_tokens"] == 3
    # A retrieve is not billed: headers only.
    assert rows["look"]["model"] is None and rows["look"]["total_tokens"] == 0
    assert json.loads(rows["look"]["rate_limits"])["x-ratelimit-remaining-requests"]

    view = await oai.engine.show_run(run["id"])
    by_key = {t["key"]: t for t in view["tasks"]}
    # gpt-4o-mini: 200 uncached x 0.15 + 1000 cached x 0.075 + 300 out x 0.60, per 1M tokens.
    assert by_key["chat"]["usage"]["cost"] == pytest.approx(285e-6)
    assert by_key["chat"]["usage"]["rate_limits"]["x-ratelimit-limit-requests"] == "1000"
    # gpt-4o: 200 x 2.50 + 1000 x 1.25 + 300 x 10.00.
    assert by_key["thread-run"]["usage"]["cost"] == pytest.approx(4750e-6)
    nested = by_key["nested"]["usage"]  # a task's usage includes its subtasks'
    assert nested["total_tokens"] == 3 and nested["cost"] == pytest.approx(3 * 0.02e-6)
    total = view["usage"]
    assert total["calls"] == 3
    assert (total["prompt_tokens"], total["cached_tokens"], total["completion_tokens"]) == (
        2403,
        2000,
        600,
    )
    assert total["cost"] == pytest.approx(285e-6 + 4750e-6 + 0.06e-6)
    assert total["cost_unknown"] == []

    shown = cli(oai.db_path, "runs", "show", run["id"])
    assert shown.returncode == 0, shown.stderr
    assert "usage: 3 calls, 3,003 tokens" in shown.stdout
    assert "$0.005035" in shown.stdout
    as_json = json.loads(cli(oai.db_path, "runs", "show", run["id"], "--json").stdout)
    assert as_json["usage"]["cost"] == pytest.approx(total["cost"])

    report = json.loads(cli(oai.db_path, "usage", "--json").stdout)
    models = {r["model"]: r for r in report["rows"]}
    assert set(models) == {"gpt-4o-mini", "gpt-4o", "text-embedding-3-small"}
    assert models["gpt-4o"]["cost"] == pytest.approx(4750e-6)
    assert models["gpt-4o-mini"]["runs"] == 1 and models["gpt-4o-mini"]["calls"] == 1
    assert report["total"]["cost"] == pytest.approx(total["cost"])
    assert report["total"]["total_tokens"] == 3003
    human = cli(oai.db_path, "usage")
    assert human.returncode == 0, human.stderr
    assert "gpt-4o-mini" in human.stdout and "total: 3 calls, 3,003 tokens" in human.stdout


async def test_an_unknown_model_shows_tokens_and_cost_unknown_until_priced(
    oai: Any, fake: FakeOpenAI, integration: OpenAI, tmp_path: Path
) -> None:
    @job(id=unique_id("oai-finetune"), integrations={"openai": integration})
    async def tuned(payload: Any, io: Any, ctx: Any) -> Any:
        await io.openai.chat.completions.create(
            "chat",
            model="ft:gpt-4o-mini:acme::abc123",
            messages=[{"role": "user", "content": "one two three four"}],
        )

    run = await oai.run(tuned)
    assert run["status"] == "COMPLETED", run["error"]
    view = await oai.engine.show_run(run["id"])
    assert view["usage"]["total_tokens"] == 4 + 5  # "echo: one two three four"
    assert view["usage"]["cost"] is None
    assert view["usage"]["cost_unknown"] == ["ft:gpt-4o-mini:acme::abc123"]
    shown = cli(oai.db_path, "runs", "show", run["id"])
    assert "cost unknown (no price for ft:gpt-4o-mini:acme::abc123)" in shown.stdout
    report = json.loads(cli(oai.db_path, "usage", "--json").stdout)
    assert report["rows"][0]["cost"] is None and report["total"]["cost"] is None

    mine = tmp_path / "prices.json"
    mine.write_text(
        json.dumps(
            {
                "models": {
                    "openai": {
                        "ft:gpt-4o-mini:acme::abc123": [
                            {"as_of": "2024-01-01", "input": 0.3, "output": 1.2}
                        ]
                    }
                }
            }
        )
    )
    priced = json.loads(cli(oai.db_path, "usage", "--json", prices=mine).stdout)
    assert priced["total"]["cost"] == pytest.approx((4 * 0.3 + 5 * 1.2) / 1e6)


def test_usage_command_refuses_bad_input(tmp_path: Path) -> None:
    db = tmp_path / "engine.db"
    assert cli(db, "db", "upgrade").returncode == 0
    empty = cli(db, "usage")
    assert (empty.returncode, empty.stdout.strip()) == (0, "no usage recorded")
    bad = cli(db, "usage", "--since", "last tuesday")
    assert bad.returncode == 1
    assert bad.stderr.startswith("error: --since 'last tuesday': give a duration")
    assert "Traceback" not in bad.stderr
    broken = tmp_path / "prices.json"
    broken.write_text("{not json")
    refused = cli(db, "usage", prices=broken)
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"error: ENGINE_PRICES={broken}: the price table is not JSON")
    assert (
        json.loads(cli(db, "usage", "--json", "--since", "7d", "--job", "x").stdout)["rows"] == []
    )


async def test_usage_is_recorded_and_reported_on_both_dialects(
    harness: Any, fake: FakeOpenAI, integration: OpenAI
) -> None:
    with openai.OpenAI(base_url=fake.base_url, api_key="sk-setup", max_retries=0) as client:
        assistant = client.beta.assistants.create(model="gpt-4o")
    fake.set_usage(prompt_tokens=100, completion_tokens=10, cached_tokens=40, reasoning_tokens=5)
    spend = seed_style_job(integration, assistant.id)
    await harness.start(spend)
    first = await harness.run(spend)
    second = await harness.run(spend)
    assert first["status"] == second["status"] == "COMPLETED", first["error"]
    assert first["usage"]["calls"] == 3
    assert first["usage"]["cached_tokens"] == 80 and first["usage"]["reasoning_tokens"] == 10
    assert first["usage"]["cost"] == pytest.approx(second["usage"]["cost"])
    report = await harness.engine.usage_report(job_id=spend.id)
    assert {r["model"]: r["runs"] for r in report["rows"]} == {
        "gpt-4o": 2,
        "gpt-4o-mini": 2,
        "text-embedding-3-small": 2,
    }
    assert report["total"]["cost"] == pytest.approx(first["usage"]["cost"] * 2)
    assert report["rows"][0]["day"] == first["completed_at"][:10]
    later = await harness.engine.usage_report(since=4102444800.0)  # 2100-01-01
    assert later["rows"] == []


async def test_images_are_counted_and_priced_per_image_on_both_dialects(
    harness: Any, fake: FakeOpenAI, integration: OpenAI
) -> None:
    @job(id=unique_id("oai-images"), integrations={"openai": integration})
    async def draw(payload: Any, io: Any, ctx: Any) -> int:
        made = await io.openai.images.generate(
            "poster", model="dall-e-3", prompt="a cat", size="1024x1792", quality="hd"
        )
        # OpenAI's defaults: dall-e-2, standard quality.
        pair = await io.openai.images.generate("sketches", prompt="a dog", n=2, size="512x512")
        return len(made.data) + len(pair.data)

    await harness.start(draw)
    run = await harness.run(draw)
    assert run["status"] == "COMPLETED" and run["output"] == 3, run["error"]
    async with harness.store.begin() as conn:
        from sqlalchemy import text

        rows = (
            await conn.execute(
                text(
                    "SELECT t.key, u.model, u.images, u.image_size, u.image_quality "
                    "FROM engine_task_usage u JOIN engine_tasks t ON t.id = u.task_id "
                    "WHERE u.run_id = :id ORDER BY t.key"
                ),
                {"id": run["id"]},
            )
        ).all()
    assert [tuple(r) for r in rows] == [
        ("poster", "dall-e-3", 1, "1024x1792", "hd"),
        ("sketches", "dall-e-2", 2, "512x512", "standard"),
    ]
    # The shipped table's prices (dated 2023-11-06): $0.12 an HD tall image, $0.018 a 512px one.
    tasks = {t["key"]: t["usage"] for t in run["tasks"]}
    assert tasks["poster"]["cost"] == pytest.approx(0.12) and tasks["poster"]["images"] == 1
    assert tasks["sketches"]["cost"] == pytest.approx(0.036)
    assert run["usage"]["images"] == 3 and run["usage"]["cost"] == pytest.approx(0.156)
    report = await harness.engine.usage_report(job_id=draw.id)
    assert sorted((r["model"], r["images"], r["cost"]) for r in report["rows"]) == [
        ("dall-e-2", 2, pytest.approx(0.036)),
        ("dall-e-3", 1, pytest.approx(0.12)),
    ]


async def test_an_image_without_a_price_makes_the_cost_unknown(
    oai: Any, fake: FakeOpenAI, integration: OpenAI
) -> None:
    @job(id=unique_id("oai-odd-image"), integrations={"openai": integration})
    async def draw(payload: Any, io: Any, ctx: Any) -> None:
        await io.openai.images.generate("huge", model="dall-e-3", prompt="x", size="4096x4096")

    run = await oai.run(draw)
    assert run["status"] == "COMPLETED", run["error"]
    view = await oai.engine.show_run(run["id"])
    assert view["usage"]["images"] == 1 and view["usage"]["cost"] is None
    assert view["usage"]["cost_unknown"] == ["dall-e-3 (standard 4096x4096 images)"]
    shown = cli(oai.db_path, "runs", "show", run["id"])
    assert "1 image, cost unknown (no price for dall-e-3" in shown.stdout, shown.stdout
