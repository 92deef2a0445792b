"""An aiohttp handler calling a requests-based client library, unchanged, without threads.

``WeatherClient`` stands for the SDKs people already have: synchronous code on ``requests``
(a ``Session``, ``raise_for_status``, ``.json()``), knowing nothing of asyncio. Two aiohttp
servers run on one event loop, on 127.0.0.1 with ports the system picks:

* ``weather`` -- the upstream service the SDK talks to: ``GET /forecast/{city}`` answers
  after 0.2 s, as a real service would.
* ``front`` -- an aiohttp application whose handler calls the SDK in a green fiber
  (``await gb.spawn_green(sdk.forecast, city)``). ``gb.patch_blocking()`` makes the SDK's socket
  calls wait on the loop instead of blocking it: the front serves many requests at once, and the
  SDK can even call a service running on the same loop.

The example asks ``front`` for four cities at once with aiohttp's client, prints the answers,
and stops both servers. ``main()`` expects ``gb.patch_blocking()`` to have been called, as the
``__main__`` block does at start-up.

    python3 examples/blocking_sdk.py
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import requests
from aiohttp import ClientSession, web

import greenbridge as gb

FORECASTS = {"Lyon": ("sunny", 24), "Oslo": ("snow", -3), "Lima": ("cloudy", 19), "Pune": ("rain", 28)}

# -- a synchronous SDK, as found on PyPI: nothing here knows about asyncio or greenbridge --------


class WeatherError(Exception):
    """The weather service refused a request."""


class WeatherClient:
    """A blocking client for the weather service, on a ``requests.Session``."""

    def __init__(self, base_url: str, timeout: float = 5.0) -> None:
        self._base_url = base_url
        self._timeout = timeout
        self._session = requests.Session()

    def forecast(self, city: str) -> str:
        response = self._session.get(f"{self._base_url}/forecast/{city}", timeout=self._timeout)
        if response.status_code == 404:
            raise WeatherError(f"no forecast for {city}")
        response.raise_for_status()
        body = response.json()
        return f"{body['city']}: {body['sky']}, {body['celsius']} °C"

    def close(self) -> None:
        self._session.close()


# -- the upstream service ---------------------------------------------------------------------------


async def forecast(request: web.Request) -> web.Response:
    city = request.match_info["city"]
    await asyncio.sleep(0.2)  # a service takes a while to answer
    if city not in FORECASTS:
        raise web.HTTPNotFound(text=f"unknown city {city!r}")
    sky, celsius = FORECASTS[city]
    return web.json_response({"city": city, "sky": sky, "celsius": celsius})


# -- the front: an aiohttp handler calling the SDK in a green fiber ------------------------------

SDK = web.AppKey("sdk", WeatherClient)


async def weather_page(request: web.Request) -> web.Response:
    sdk = request.app[SDK]
    try:
        line = await gb.spawn_green(sdk.forecast, request.match_info["city"])
    except WeatherError as exc:
        return web.Response(status=404, text=str(exc))
    return web.Response(text=line)


async def start(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


async def main() -> None:
    upstream = web.Application()
    upstream.router.add_get("/forecast/{city}", forecast)
    upstream_runner, upstream_port = await start(upstream)
    front = web.Application()
    front[SDK] = WeatherClient(f"http://127.0.0.1:{upstream_port}")
    front.router.add_get("/weather/{city}", weather_page)
    front_runner, front_port = await start(front)
    try:
        async with ClientSession() as http:

            async def ask(city: str) -> Any:
                async with http.get(f"http://127.0.0.1:{front_port}/weather/{city}") as response:
                    return response.status, await response.text()

            started = time.monotonic()
            answers = await asyncio.gather(*(ask(city) for city in ("Lyon", "Oslo", "Lima", "Atlantis")))
            elapsed = time.monotonic() - started
        for status, text in answers:
            print(f"GET /weather -> {status}: {text}")
        # One after another takes at least 4 x 0.2 s; together, one 0.2 s plus the machine's load.
        together = "at once" if elapsed < 0.75 else f"one after another ({elapsed:.2f} s)"
        print(f"four SDK calls, each waiting 0.2 s upstream, were served {together}")
    finally:
        front[SDK].close()
        await front_runner.cleanup()
        await upstream_runner.cleanup()
    print("both servers stopped")


if __name__ == "__main__":
    # Once, at start-up, before the loop runs (it imports psycopg2 / psycopg when they are
    # installed, to hook them): from here on the SDK's socket calls cooperate in fibers.
    gb.patch_blocking()
    asyncio.run(main())
