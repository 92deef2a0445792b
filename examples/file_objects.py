"""Synchronous libraries that want a file object -- gzip, csv, json -- over a network connection.

greenbridge's connections are ``io.RawIOBase`` objects, so the standard library's blocking-style
readers and writers work on them from green code, unchanged, while the event loop keeps running:

* the client compresses a CSV upload with ``gzip.GzipFile`` and ``csv.writer`` writing straight
  into the connection, then reads the server's JSON answer with ``json.load``;
* the server decompresses and parses the upload with ``gzip.GzipFile`` and ``csv.DictReader``
  reading straight from the connection, and answers with ``json.dump``.

Nothing is buffered whole: each side streams through the standard library's own buffers. All of
it runs inside an ordinary asyncio program, beside an asyncio Task that keeps ticking.

    python3 examples/file_objects.py
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
import json
from typing import Any

import greenbridge as gb
from greenbridge import net

ROWS = [("apples", 3, 0.40), ("bread", 1, 2.50), ("cheese", 2, 4.80), ("dates", 5, 0.39)]


def handle_upload(conn: net.Connection, addr: Any) -> None:
    """The server's handler: gunzip, parse the CSV, answer in JSON -- all through file objects."""
    with gzip.GzipFile(fileobj=io.BufferedReader(conn), mode="rb") as unzipped:
        rows = list(csv.DictReader(io.TextIOWrapper(unzipped, encoding="utf-8", newline="")))
    total = sum(int(row["qty"]) * float(row["price"]) for row in rows)
    answer = io.TextIOWrapper(io.BufferedWriter(conn), encoding="utf-8")
    json.dump({"lines": len(rows), "total": round(total, 2)}, answer)
    answer.flush()
    answer.detach()  # leave the connection to run_server, which closes it


def upload(port: int) -> dict[str, Any]:
    """The client: stream a gzipped CSV into the connection, then read the JSON answer."""
    with net.connect("127.0.0.1", port) as conn:
        with gzip.GzipFile(fileobj=conn, mode="wb") as zipped:
            text = io.TextIOWrapper(zipped, encoding="utf-8", newline="")
            writer = csv.writer(text)
            writer.writerow(("item", "qty", "price"))
            writer.writerows(ROWS)
            text.flush()
            text.detach()  # closing the gzip stream (not the text layer) writes its trailer
        conn.shutdown("send")
        answer: dict[str, Any] = json.load(io.TextIOWrapper(io.BufferedReader(conn), encoding="utf-8"))
        return answer


def serve_and_upload() -> dict[str, Any]:
    stop = gb.Promise[None]()
    with net.listen("127.0.0.1", 0) as listener, gb.Switch() as sw:
        sw.fork(lambda: net.run_server(listener, handle_upload, stop=stop))
        try:
            return upload(listener.address[1])
        finally:
            stop.resolve(None)  # the server finishes its connections and returns


async def main() -> None:
    ticks = 0

    async def ticker() -> None:  # an asyncio Task that keeps running meanwhile
        nonlocal ticks
        while True:
            await asyncio.sleep(0)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        answer = await gb.spawn_green(serve_and_upload)
    finally:
        task.cancel()
    print(f"uploaded {len(ROWS)} rows as gzipped CSV; the server answered {answer}")
    print(f"the asyncio ticker ran {'on' if ticks else 'NOT'} meanwhile")


if __name__ == "__main__":
    asyncio.run(main())
