"""``python -m bitrix24_emulator``: serve the emulator with uvicorn."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bitrix24_emulator.config import EmulatorConfig
from bitrix24_emulator.faults import FAULT_KINDS, FaultConfig


def parser() -> argparse.ArgumentParser:
    """The command-line options."""
    p = argparse.ArgumentParser(
        prog="python -m bitrix24_emulator",
        description="A stand-in Bitrix24 portal and OAuth server on one port.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8090)
    p.add_argument("--seed", metavar="FILE", help="JSON or TOML seed replacing the default one")
    p.add_argument("--plan", choices=["standard", "enterprise", "unlimited"], default="standard")
    p.add_argument("--domain", help="portal domain (default: the seed's, example.bitrix24.ru)")
    p.add_argument("--member-id", help="portal member_id (32 hex digits)")
    p.add_argument("--base-url", help="public URL of the emulator (default http://HOST:PORT)")
    p.add_argument("--no-rate-limit", action="store_true", help="turn the leaky bucket off")
    p.add_argument("--operating-limit", type=float, default=480.0, help="seconds per 10 minutes")
    p.add_argument("--token-lifetime", type=int, default=3600, help="access token lifetime, s")
    p.add_argument("--webhook-code", default="emulatorhook0001", help="code of the user-1 webhook")
    faults = p.add_argument_group("faults")
    faults.add_argument("--latency-ms", type=float, default=0.0, help="fixed added latency")
    faults.add_argument(
        "--latency-dist",
        choices=["fixed", "uniform", "normal"],
        default="fixed",
        help="uniform: 0..2 x latency; normal: mean latency, spread --latency-stddev-ms",
    )
    faults.add_argument("--latency-stddev-ms", type=float, default=0.0)
    faults.add_argument("--error-rate", type=float, default=0.0, help="share of failed requests")
    faults.add_argument(
        "--error-kinds",
        default="500",
        help=f"comma-separated among {','.join(FAULT_KINDS)}",
    )
    faults.add_argument("--outage-start", type=float, help="unix time the outage begins")
    faults.add_argument("--outage-seconds", type=float, help="outage length")
    faults.add_argument("--hang-seconds", type=float, default=65.0, help="hang of 'timeout'")
    faults.add_argument("--random-seed", type=int, help="seed for fault draws")
    p.add_argument("--log-level", default="warning")
    return p


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    """An :class:`EmulatorConfig` from parsed options."""
    seed = None
    if args.seed:
        from bitrix24_emulator.seed import load_seed_file

        seed = load_seed_file(args.seed)
    kinds = [k.strip() for k in args.error_kinds.split(",") if k.strip()]
    bad = [k for k in kinds if k not in FAULT_KINDS]
    if bad:
        raise SystemExit(f"unknown --error-kinds: {', '.join(bad)}")
    faults = FaultConfig(
        error_rate=args.error_rate, error_kinds=kinds, hang_seconds=args.hang_seconds
    )
    if args.latency_ms:
        faults.latency_mode = args.latency_dist
        faults.latency_ms = args.latency_ms
        faults.latency_min_ms = 0.0
        faults.latency_max_ms = 2 * args.latency_ms
        faults.latency_stddev_ms = args.latency_stddev_ms
    if args.outage_seconds:
        import time

        faults.outage_start = args.outage_start if args.outage_start is not None else time.time()
        faults.outage_end = faults.outage_start + args.outage_seconds
    return EmulatorConfig(
        domain=args.domain,
        member_id=args.member_id,
        plan=args.plan,
        seed=seed,
        base_url=args.base_url or f"http://{args.host}:{args.port}",
        rate_limit=not args.no_rate_limit,
        operating_limit=args.operating_limit,
        access_token_lifetime=args.token_lifetime,
        webhook_code=args.webhook_code,
        random_seed=args.random_seed,
        faults=faults,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and serve until interrupted."""
    import uvicorn

    from bitrix24_emulator.app import create_app

    args = parser().parse_args(argv)
    config = config_from_args(args)
    app = create_app(config)
    print(  # noqa: T201 - the one line a person starting the emulator wants to see
        f"Bitrix24 emulator: portal {app.state.emulator.portal.domain} at {config.base_url}/ "
        f"(REST {config.base_url}/rest/, webhook {config.base_url}/rest/1/{config.webhook_code}/)",
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
