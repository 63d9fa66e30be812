"""The live page at ``/``: calls, cards and leads as an employee would see them arrive."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse

PAGE = (Path(__file__).parent / "index.html").read_text(encoding="utf-8")


async def index(request: Request) -> HTMLResponse:
    """The live page (it polls the inspection API every second)."""
    return HTMLResponse(PAGE)
