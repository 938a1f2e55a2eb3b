"""The price table: what a model's tokens cost, by provider, model and date.

Shipped as data (`engine/data/prices.json`, dated by its `as_of`); a user's own table, in the
same format, is merged over it from the file `ENGINE_PRICES` names (its models replace the
shipped entries of the same name, every other model keeps its shipped prices). A model found in
neither, or used before its first dated price, has no price: its cost is unknown, never guessed.

    {"as_of": "2025-08-07", "currency": "USD", "unit": "per 1M tokens",
     "models": {"openai": {"gpt-4o-mini": [
         {"as_of": "2024-07-18", "input": 0.15, "cached_input": 0.075, "output": 0.6}]}}}

Cost of one call: uncached prompt tokens at `input`, cached ones at `cached_input` (`input`
when the model has no cache discount), completion tokens (reasoning included: OpenAI bills them
as output) at `output`, all per million tokens. An image model is billed per image, by quality
and size: `"images": {"standard": {"1024x1024": 0.04, ...}, "hd": {...}}` (its entry needs no
token prices); an image of a quality or size the entry does not list has no price.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .exceptions import EngineError

ENV_VAR = "ENGINE_PRICES"
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# "gpt-4o-mini-2024-07-18" is priced as "gpt-4o-mini" unless the table names the snapshot.
_SNAPSHOT = re.compile(r"-\d{4}-\d{2}-\d{2}$")


class PriceTableError(EngineError):
    """The price table could not be read: fix the file ENGINE_PRICES names, or unset it."""


@dataclass(frozen=True)
class Price:
    as_of: str
    input: float
    cached_input: float
    output: float
    # Per image, by quality then size; empty for a model billed by tokens only.
    images: dict[str, dict[str, float]] = field(default_factory=dict)

    def cost(self, prompt: int, cached: int, completion: int) -> float:
        uncached = max(prompt - cached, 0)
        total = uncached * self.input + min(cached, prompt) * self.cached_input
        return (total + completion * self.output) / 1_000_000

    def image_cost(self, count: int, size: str | None, quality: str | None) -> float | None:
        """`count` images of `size` and `quality`, or None when the entry has no such price."""
        each = self.images.get(quality or "", {}).get(size or "")
        return None if each is None else count * each


class PriceTable:
    """Dated prices per (provider, model); `cost` is None when no price applies."""

    def __init__(
        self, models: dict[str, dict[str, list[Price]]], as_of: str, currency: str, source: str
    ) -> None:
        self.models = models
        self.as_of = as_of
        self.currency = currency
        self.source = source

    @classmethod
    def load(cls, override: str | None = None) -> PriceTable:
        """The shipped table, with the file `override` (default: $ENGINE_PRICES) merged over."""
        shipped = resources.files("engine").joinpath("data/prices.json").read_text("utf-8")
        table = _parse(json.loads(shipped), "the shipped price table")
        path = override if override is not None else os.environ.get(ENV_VAR)
        if not path:
            return table
        where = f"{ENV_VAR}={path}" if override is None else str(path)
        try:
            raw = json.loads(Path(path).read_text("utf-8"))
        except OSError as exc:
            raise PriceTableError(
                f"{where}: cannot read the price table ({exc.strerror})"
            ) from None
        except ValueError as exc:
            raise PriceTableError(f"{where}: the price table is not JSON ({exc})") from None
        mine = _parse(raw, where)
        merged = {p: dict(models) for p, models in table.models.items()}
        for provider, models in mine.models.items():
            merged.setdefault(provider, {}).update(models)
        return cls(merged, mine.as_of or table.as_of, table.currency, str(path))

    def price(self, provider: str, model: str | None, day: str) -> Price | None:
        """The price in effect on `day` ("YYYY-MM-DD"): the latest entry dated on or before."""
        if not model:
            return None
        models = self.models.get(provider, {})
        entries = models.get(model) or models.get(_SNAPSHOT.sub("", model))
        if not entries:
            return None
        known = [p for p in entries if p.as_of <= day]
        return known[-1] if known else None

    def cost(
        self, provider: str, model: str | None, day: str, prompt: int, cached: int, completion: int
    ) -> float | None:
        found = self.price(provider, model, day)
        return None if found is None else found.cost(prompt, cached, completion)


def _parse(raw: Any, where: str) -> PriceTable:
    if not isinstance(raw, dict) or not isinstance(raw.get("models"), dict):
        raise PriceTableError(
            f'{where}: expected {{"models": {{"<provider>": {{"<model>": [{{"as_of": '
            '"YYYY-MM-DD", "input": ..., "output": ...}]}}}}'
        )
    models: dict[str, dict[str, list[Price]]] = {}
    for provider, entries in raw["models"].items():
        if not isinstance(entries, dict):
            raise PriceTableError(f"{where}: models.{provider} must map model names to prices")
        models[str(provider)] = {
            str(model): _prices(dated, f"{where}: models.{provider}.{model}")
            for model, dated in entries.items()
        }
    as_of = raw.get("as_of")
    return PriceTable(models, str(as_of) if as_of else "", str(raw.get("currency", "USD")), where)


def _prices(dated: Any, where: str) -> list[Price]:
    if isinstance(dated, dict):
        dated = [dated]
    if not isinstance(dated, list) or not dated:
        raise PriceTableError(f"{where}: give a list of dated prices")
    out = []
    for entry in dated:
        if not isinstance(entry, dict) or not _DAY.match(str(entry.get("as_of", ""))):
            raise PriceTableError(f'{where}: each price needs "as_of": "YYYY-MM-DD"')
        images = _image_prices(entry.get("images"), where)
        values: dict[str, float] = {}
        for name in ("input", "output", "cached_input"):
            value = entry.get(name, values.get("input") if name == "cached_input" else None)
            if value is None and images:
                value = 0.0  # an image model: billed per image only
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                raise PriceTableError(
                    f"{where}: {name!r} must be a price per 1M tokens (a number >= 0)"
                )
            values[name] = float(value)
        out.append(Price(str(entry["as_of"]), **values, images=images))
    return sorted(out, key=lambda p: p.as_of)


def _image_prices(raw: Any, where: str) -> dict[str, dict[str, float]]:
    if raw is None:
        return {}
    shape = (
        f'{where}: "images" must map quality to size to a price per image, '
        '{"standard": {"1024x1024": 0.04}}'
    )
    if not isinstance(raw, dict):
        raise PriceTableError(shape)
    out: dict[str, dict[str, float]] = {}
    for quality, sizes in raw.items():
        if not isinstance(sizes, dict):
            raise PriceTableError(shape)
        out[str(quality)] = {}
        for size, value in sizes.items():
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                raise PriceTableError(shape)
            out[str(quality)][str(size)] = float(value)
    return out
