"""Tokens and cost as people read them: per task (its subtasks included), per run, per day.

Built from `engine_task_usage` rows and the price table (engine.prices). A call whose model has
no price keeps its tokens and makes the cost unknown (`cost: null`, the model listed under
`cost_unknown`): a total is never made of the calls that happen to have a price. A call that
only brought rate-limit headers (a retrieve, a list) spent nothing and costs 0.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from .prices import PriceTable

TOKENS = ("prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens", "total_tokens")


def _day(stamp: Any) -> str:
    if isinstance(stamp, datetime):
        return stamp.date().isoformat()
    return str(stamp)[:10]


class Summary:
    """Sums of calls and tokens, and their cost while every priced part is known."""

    def __init__(self) -> None:
        self.calls = 0
        self.tokens = dict.fromkeys(TOKENS, 0)
        self.images = 0
        self.cost = 0.0
        self.unknown: set[str] = set()
        self.models: set[str] = set()

    def add_call(self, row: dict[str, Any], prices: PriceTable, day: str) -> None:
        spent = {name: int(row.get(name) or 0) for name in TOKENS}
        images = int(row.get("images") or 0)
        model = row.get("model")
        if not model and not spent["total_tokens"] and not images:
            return  # headers only: nothing was billed
        self.add(spent, 1, model)
        self.images += images
        price = prices.price(str(row.get("provider") or ""), model, day)
        if spent["total_tokens"]:
            if price is None:
                self.unknown.add(str(model or "unknown model"))
            else:
                self.cost += price.cost(
                    spent["prompt_tokens"], spent["cached_tokens"], spent["completion_tokens"]
                )
        if images and (price is None or price.images or not spent["total_tokens"]):
            # Priced per image by size and quality; a model whose entry has no image prices
            # but reported tokens (gpt-image-1) is billed by those tokens.
            size, quality = row.get("image_size"), row.get("image_quality")
            cost = None if price is None else price.image_cost(images, size, quality)
            if cost is None:
                self.unknown.add(f"{model or 'unknown model'} ({quality} {size} images)")
            else:
                self.cost += cost

    def add(self, spent: dict[str, int], calls: int, model: str | None) -> None:
        self.calls += calls
        for name in TOKENS:
            self.tokens[name] += spent[name]
        if model:
            self.models.add(model)

    def merge(self, other: Summary) -> None:
        self.add(other.tokens, other.calls, None)
        self.images += other.images
        self.models |= other.models
        self.cost += other.cost
        self.unknown |= other.unknown

    def view(self) -> dict[str, Any] | None:
        if not self.calls:
            return None
        return {
            "calls": self.calls,
            **self.tokens,
            "images": self.images,
            "models": sorted(self.models),
            "cost": None if self.unknown else round(self.cost, 8),
            "cost_unknown": sorted(self.unknown),
        }


def attach(
    view: dict[str, Any],
    rows: list[dict[str, Any]],
    prices: PriceTable,
    descendants: Sequence[dict[str, Any]] = (),
) -> None:
    """Adds `usage` to a run view (engine.views) and to each task in it: tokens and cost of the
    task and its subtasks, and the task's own rate-limit headers. The run's total includes its
    child runs' (`descendants`: their usage rows), also given alone as `child_runs`. The key is
    always there, null for a run (or a task) without paid calls, as `waiting_for` is for a run
    that waits for nothing."""
    by_path = {(*json.loads(r["parent_path"]), r["key"]): r for r in rows}
    total = Summary()
    for node in view["tasks"]:
        total.merge(_attach_task(node, (), by_path, prices))
    of_children = Summary()
    for row in descendants:
        of_children.add_call(row, prices, _day(row.get("recorded_at")))
    total.merge(of_children)
    found = total.view()
    view["usage"] = None if found is None else {**found, "currency": prices.currency}
    if found is not None and of_children.calls:
        view["usage"]["child_runs"] = of_children.view()


def _attach_task(
    node: dict[str, Any],
    parent: tuple[str, ...],
    by_path: dict[tuple[str, ...], dict[str, Any]],
    prices: PriceTable,
) -> Summary:
    path = (*parent, node["key"])
    mine = Summary()
    row = by_path.get(path)
    if row is not None:
        mine.add_call(row, prices, _day(row.get("recorded_at")))
    for child in node.get("children", []):
        mine.merge(_attach_task(child, path, by_path, prices))
    found = mine.view()
    if row is not None and row.get("rate_limits"):
        found = {**(found or {}), "rate_limits": row["rate_limits"]}
    node["usage"] = found
    return mine


def report(rows: list[dict[str, Any]], prices: PriceTable) -> dict[str, Any]:
    """`engine usage`: the store's sums by day, job and model, with their cost and a total."""
    out = []
    total = Summary()
    for row in rows:
        line = Summary()
        line.add_call({**row}, prices, str(row["day"]))
        # add_call counted one call: the report's rows are sums of many.
        line.calls = int(row["calls"])
        total.merge(line)
        view = line.view() or {}
        out.append(
            {
                "day": str(row["day"]),
                "job_id": row["job_id"],
                "provider": row["provider"],
                "model": row["model"],
                "calls": int(row["calls"]),
                "runs": int(row["runs"]),
                **{name: int(row[name] or 0) for name in TOKENS},
                "images": int(row.get("images") or 0),
                "image_size": row.get("image_size"),
                "image_quality": row.get("image_quality"),
                "cost": view.get("cost"),
            }
        )
    summary = total.view() or {
        "calls": 0, **dict.fromkeys(TOKENS, 0), "images": 0, "cost": 0.0
    }  # fmt: skip
    summary.pop("models", None)
    summary.setdefault("cost_unknown", [])
    return {
        "currency": prices.currency,
        "prices_as_of": prices.as_of,
        "rows": out,
        "total": summary,
    }


# -- text for people --------------------------------------------------------------------------


def cost_text(cost: float | None, currency: str = "USD") -> str:
    if cost is None:
        return "cost unknown"
    symbol = "$" if currency == "USD" else f"{currency} "
    if not cost:
        return f"{symbol}0"
    # Four significant digits for small sums (a cheap call costs millionths), cents above.
    decimals = min(10, max(2, 3 - math.floor(math.log10(cost))))
    return f"{symbol}{cost:.{decimals}f}"


def tokens_text(usage: dict[str, Any]) -> str:
    """ "1,500 tokens (1,200 in, 1,000 cached; 300 out, 200 reasoning)" """
    extra = []
    if usage.get("cached_tokens"):
        extra.append(f"{usage['cached_tokens']:,} cached")
    inside = f"{usage['prompt_tokens']:,} in" + (f", {extra[0]}" if extra else "")
    out = f"{usage['completion_tokens']:,} out"
    if usage.get("reasoning_tokens"):
        out += f", {usage['reasoning_tokens']:,} reasoning"
    text = f"{usage['total_tokens']:,} tokens ({inside}; {out})"
    images = int(usage.get("images") or 0)
    if not images:
        return text
    made = f"{images:,} image{'' if images == 1 else 's'}"
    return f"{made}, {text}" if usage["total_tokens"] else made


def summary_text(usage: dict[str, Any], currency: str = "USD") -> str:
    """One line for a task or a run: tokens, then cost (or which models have no price)."""
    cost = cost_text(usage.get("cost"), currency)
    if usage.get("cost") is None and usage.get("cost_unknown"):
        cost += f" (no price for {', '.join(usage['cost_unknown'])})"
    return f"{tokens_text(usage)}, {cost}"


def parse_since(text: str, now: float) -> float:
    """`--since`: "7d", "24h", "30m", a date ("2026-11-01", UTC) or an ISO 8601 time."""
    units = {"d": 86400, "h": 3600, "m": 60}
    stripped = text.strip()
    if stripped[:-1].isdigit() and stripped[-1:] in units:
        return now - int(stripped[:-1]) * units[stripped[-1]]
    try:
        when = datetime.fromisoformat(stripped)
    except ValueError:
        raise ValueError(
            f"--since {text!r}: give a duration back from now (7d, 24h, 30m), a date "
            "(2026-11-01) or an ISO 8601 time"
        ) from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
