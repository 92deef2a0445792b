"""An aiohttp server whose handler calls direct-style code that itself makes HTTP requests.

Two aiohttp servers run on one event loop, on 127.0.0.1 with ports the system picks:

* ``prices`` -- a plain aiohttp service: ``GET /price/{item}`` answers ``{"item": ..., "cents": ...}``
  after a short delay, as a real service would.
* ``shop`` -- an aiohttp service whose handler calls ``quote_basket``, ordinary direct-style
  code (no async, no await). That code fetches every price from ``prices`` with aiohttp's own
  client, through a green façade, three requests at a time with ``fiber.map``.

The example then asks ``shop`` for a quote with aiohttp's client, prints it, and stops both
servers.

    python3 examples/aiohttp_green.py
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import ClientResponseError, ClientSession, web

import greenbridge as gb
from greenbridge import fiber

SESSION = web.AppKey("session", ClientSession)
PRICES_URL = web.AppKey("prices_url", str)

PRICES = {"apple": 40, "bread": 250, "cheese": 480, "dates": 390, "eggs": 310}

# -- the upstream service, plain asyncio -----------------------------------------------------------


async def price(request: web.Request) -> web.Response:
    item = request.match_info["item"]
    await asyncio.sleep(0.01)  # a service takes a little while to answer
    if item not in PRICES:
        raise web.HTTPNotFound(text=f"no price for {item!r}")
    return web.json_response({"item": item, "cents": PRICES[item]})


# -- direct-style code: reads like blocking code, waits without blocking the loop -------------------


def fetch_price(http: Any, base_url: str, item: str) -> int:
    """One HTTP request, written as a plain call: the fiber waits, the loop serves others."""
    with http.get(f"{base_url}/price/{item}") as response:
        response.raise_for_status()
        body = response.json()
    return int(body["cents"])


def quote_basket(http: Any, base_url: str, items: list[str]) -> dict[str, Any]:
    """Price a basket: the requests run three at a time, each in a green fiber of its own."""
    cents = fiber.map(lambda item: fetch_price(http, base_url, item), items, max_fibers=3)
    return {"items": dict(zip(items, cents, strict=True)), "total_cents": sum(cents)}


# -- the front service: an aiohttp handler calling the direct-style code ----------------------------


async def quote(request: web.Request) -> web.Response:
    items = request.query["items"].split(",")
    http = gb.green_facade(request.app[SESSION])
    base_url = request.app[PRICES_URL]
    try:
        result = await gb.spawn_green(quote_basket, http, base_url, items)
    except ClientResponseError as exc:  # raised in the green code, caught here as usual
        upstream = f"{exc.status} {exc.message} for {exc.request_info.url.path}"
        raise web.HTTPBadGateway(text=f"could not quote {items}: upstream said {upstream}") from exc
    return web.json_response(result)


async def start(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


async def main() -> None:
    prices = web.Application()
    prices.router.add_get("/price/{item}", price)
    prices_runner, prices_url = await start(prices)

    async with ClientSession() as session:
        shop = web.Application()
        shop[SESSION] = session
        shop[PRICES_URL] = prices_url
        shop.router.add_get("/quote", quote)
        shop_runner, shop_url = await start(shop)
        try:
            async with session.get(f"{shop_url}/quote", params={"items": "apple,bread,cheese,eggs"}) as r:
                print(f"GET /quote -> {r.status}: {await r.json()}")
            async with session.get(f"{shop_url}/quote", params={"items": "apple,caviar"}) as r:
                print(f"GET /quote -> {r.status}: {await r.text()}")
        finally:
            await shop_runner.cleanup()
            await prices_runner.cleanup()
    print("both servers stopped")


if __name__ == "__main__":
    asyncio.run(main())
