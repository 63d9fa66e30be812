"""Data for ``callbridge demo``: recorded AMI scenarios shipped with the package."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def streams() -> list[Path]:
    """The recorded ``.ami`` scenarios the demo replays, in play order (with ``.timing.tsv``)."""
    folder = Path(str(files(__name__).joinpath("streams")))
    return sorted(folder.glob("*.ami"))
