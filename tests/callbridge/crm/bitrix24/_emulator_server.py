"""Run the emulator on a real port, optionally with a scaled rate plan (for process tests)."""

from __future__ import annotations

import argparse

import uvicorn

from bitrix24_emulator.app import create_app
from bitrix24_emulator.config import EmulatorConfig
from tests.callbridge.crm.bitrix24.harness import ScaledRateLimiter


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--capacity", type=int, default=0, help="0: no rate limit")
    parser.add_argument("--rate", type=float, default=0.0)
    args = parser.parse_args()
    base = f"http://127.0.0.1:{args.port}"
    config = EmulatorConfig(
        base_url=base, domain=f"127.0.0.1:{args.port}", rate_limit=args.capacity > 0
    )
    app = create_app(config)
    if args.capacity:
        app.state.emulator.rate = ScaledRateLimiter(args.capacity, args.rate)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
