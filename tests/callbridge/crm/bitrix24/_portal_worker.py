"""A worker process that makes Bitrix24 calls through callbridge's client (process tests).

Prints one JSON line: how many calls succeeded, the errors by class, and the time span.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import httpx

from callbridge.config import Settings
from callbridge.crm.bitrix24.errors import Bitrix24Error
from callbridge.portals import Portals
from callbridge.storage.crypto import SecretBox
from callbridge.storage.db import create_engine, create_session_factory


async def run(args: argparse.Namespace) -> dict[str, object]:
    settings = Settings(
        database_url=args.db,
        encryption_keys=args.key,
        bitrix24_client_id=args.client_id,
        bitrix24_client_secret=args.client_secret,
        bitrix24_oauth_server_url=args.emulator,
        public_base_url="http://127.0.0.1:1",
    )
    engine = create_engine(args.db)
    errors: dict[str, int] = {}
    ok = 0
    try:
        async with httpx.AsyncClient(timeout=30.0, follow_redirects=False) as http:
            portals = Portals(
                settings, create_session_factory(engine), http, SecretBox(settings.fernet_keys())
            )
            client = await portals.client(args.member)
            await asyncio.sleep(max(0.0, args.start_at - time.time()))
            started = time.time()
            semaphore = asyncio.Semaphore(args.concurrency)

            async def one() -> None:
                nonlocal ok
                async with semaphore:
                    try:
                        await client.call(args.method)
                        ok += 1
                    except Bitrix24Error as err:
                        name = type(err).__name__
                        errors[name] = errors.get(name, 0) + 1

            await asyncio.gather(*(one() for _ in range(args.calls)))
            finished = time.time()
    finally:
        await engine.dispose()
    return {"ok": ok, "errors": errors, "started": started, "finished": finished}


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("db", "key", "emulator", "member", "client-id", "client-secret"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--method", default="profile")
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=5)
    parser.add_argument("--start-at", type=float, default=0.0)
    print(json.dumps(asyncio.run(run(parser.parse_args()))), flush=True)


if __name__ == "__main__":
    main()
