"""Store benchmark: what a burst of work costs the embedded SQLite store.

N document writes, N reads and N events asked at once (as when a thousand devices
reconnect after a restart), then N writes one after the other (each waiting for the
previous one), on a fresh ``meshd.db`` with the server's settings (WAL,
``synchronous=FULL``: every acknowledged write is on disk).

    python bench/store.py            # 1000 of each
    python bench/store.py -n 5000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from twisted.internet import defer, reactor  # noqa: E402

from meshd.store.sqlite import SQLiteStore  # noqa: E402


def node(i: int) -> dict[str, Any]:
    return {"_id": f"node//bench{i:06d}", "type": "node", "domain": "", "meshid": "mesh//b",
            "name": f"bench-{i}", "host": f"10.0.{i >> 8 & 255}.{i & 255}",
            "agent": {"id": 6, "caps": 15, "ver": 0}}


async def run(count: int) -> None:
    folder = tempfile.mkdtemp(prefix="meshd-bench-store-")
    store = SQLiteStore(folder, reactor)
    await store.open()
    now = datetime.now(timezone.utc)
    results = []

    async def timed(label: str, work: Any) -> None:
        began = time.perf_counter()
        await work()
        elapsed = time.perf_counter() - began
        results.append((label, elapsed))

    await timed(f"{count} writes at once", lambda: defer.gatherResults(
        [store.set(node(i)) for i in range(count)]))
    await timed(f"{count} reads at once", lambda: defer.gatherResults(
        [store.get(f"node//bench{i:06d}") for i in range(count)]))
    await timed(f"{count} events at once", lambda: defer.gatherResults(
        [store.store_event({"ids": ["*", f"node//bench{i:06d}"], "domain": "",
                            "action": "nodeconnect", "time": now}) for i in range(count)]))

    async def one_by_one() -> None:
        for i in range(count):
            await store.set(node(i))

    await timed(f"{count} writes one by one", one_by_one)
    await store.close()
    print(f"SQLite store, {count} operations each "
          f"({store.group_commits} group commits carried {store.grouped_writes} writes)")
    for label, elapsed in results:
        print(f"  {label:<28} {elapsed * 1000:8.0f} ms  {count / elapsed:9.0f} /s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=1000)
    args = parser.parse_args()

    def done(result: Any) -> None:
        if result is not None and hasattr(result, "printTraceback"):
            result.printTraceback()
        reactor.stop()

    defer.ensureDeferred(run(args.n)).addBoth(done)
    reactor.run()


if __name__ == "__main__":
    main()
