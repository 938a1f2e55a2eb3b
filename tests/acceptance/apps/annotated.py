"""Jobs whose payload type is their parameter's annotation (no `payload=`), with
`from __future__ import annotations`, as a user would write them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from engine import IO, Context, job


class Order(BaseModel):
    order_id: int
    item: str = "pen"


@job(id="annotated-order", version="1")
async def annotated_order(payload: Order, io: IO, ctx: Context) -> dict[str, Any]:
    return {"type": type(payload).__name__, "order_id": payload.order_id, "item": payload.item}


@job(id="annotated-any", version="1")
async def annotated_any(payload: dict[str, Any], io: IO, ctx: Context) -> dict[str, Any]:
    return {"payload": payload}
