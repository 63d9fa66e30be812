"""Per-portal request budgets shared by every process (the GCRA row of each portal).

Each step is one atomic ``UPDATE … RETURNING`` on the portal's row: the row lock lasts one
statement, so any number of processes share the budget without a lock held across a request.
On PostgreSQL the time is the database's clock (``clock_timestamp()``), so processes on hosts
with skewed clocks still agree; on SQLite (one process) it is the caller's.
The arithmetic mirrors ``callbridge.crm.bitrix24.rate_limit`` (``reserve``, ``penalise``,
``effective_slowdown``), whose constants arrive as parameters.
"""

from __future__ import annotations

import time

from sqlalchemy import text

from callbridge.storage.models import Bitrix24RateBudget
from callbridge.storage.repositories.base import Repository

_INSERT = text(
    "INSERT INTO bitrix24_rate_budgets (key, tat, slowdown, penalised_at) "
    "VALUES (:key, 0, 1, 0) ON CONFLICT (key) DO NOTHING"
)

# The slowdown in force now: back to 1 linearly after the last penalty.
_PG_SLOWDOWN = (
    "LEAST(1.0, b.slowdown + GREATEST(0.0, c.now - b.penalised_at) * CAST(:recovery AS float8))"
)
_PG_RESERVE = text(
    "WITH c AS (SELECT extract(epoch FROM clock_timestamp())::float8 AS now) "
    "UPDATE bitrix24_rate_budgets AS b "
    f"SET tat = GREATEST(b.tat, c.now) + 1.0 / (CAST(:rate AS float8) * {_PG_SLOWDOWN}) "
    "FROM c WHERE b.key = :key "
    "RETURNING b.tat AS tat, c.now AS now"
)
_PG_PENALISE = text(
    "WITH c AS (SELECT extract(epoch FROM clock_timestamp())::float8 AS now) "
    "UPDATE bitrix24_rate_budgets AS b "
    f"SET slowdown = GREATEST(CAST(:floor AS float8), {_PG_SLOWDOWN} * CAST(:factor AS float8)), "
    "penalised_at = c.now, "
    "tat = GREATEST(b.tat, c.now + CAST(:capacity AS float8) / CAST(:rate AS float8)) "
    "FROM c WHERE b.key = :key RETURNING b.key"
)
_LITE_SLOWDOWN = "MIN(1.0, slowdown + MAX(0.0, :now - penalised_at) * :recovery)"
_LITE_RESERVE = text(
    "UPDATE bitrix24_rate_budgets "
    f"SET tat = MAX(tat, :now) + 1.0 / (:rate * {_LITE_SLOWDOWN}) "
    "WHERE key = :key RETURNING tat, :now AS now"
)
_LITE_PENALISE = text(
    "UPDATE bitrix24_rate_budgets "
    "SET tat = MAX(tat, :now + :capacity / :rate), "
    f"slowdown = MAX(:floor, {_LITE_SLOWDOWN} * :factor), penalised_at = :now "
    "WHERE key = :key RETURNING key"
)


class RateBudgetRepository(Repository[Bitrix24RateBudget]):
    """Queries on ``bitrix24_rate_budgets``."""

    model = Bitrix24RateBudget

    async def reserve(self, key: str, capacity: int, rate: float, recovery: float) -> float:
        """Take the next slot of ``key``'s budget; returns the seconds to wait for it."""
        statement = _PG_RESERVE if self.dialect == "postgresql" else _LITE_RESERVE
        params = {"key": key, "rate": rate, "recovery": recovery, "now": time.time()}
        row = (await self.session.execute(statement, params)).one_or_none()
        if row is None:
            await self.session.execute(_INSERT, {"key": key})
            row = (await self.session.execute(statement, params)).one()
        # GCRA: the first ``capacity`` requests of an idle budget go at once; a slowdown
        # stretches the spacing (in the UPDATE), never the burst window.
        return max(0.0, float(row.tat) - capacity / rate - float(row.now))

    async def penalise(
        self, key: str, capacity: int, rate: float, factor: float, floor: float, recovery: float
    ) -> None:
        """Assume the portal's bucket is full and drain slower (QUERY_LIMIT_EXCEEDED)."""
        statement = _PG_PENALISE if self.dialect == "postgresql" else _LITE_PENALISE
        params = {
            "key": key,
            "capacity": capacity,
            "rate": rate,
            "factor": factor,
            "floor": floor,
            "recovery": recovery,
            "now": time.time(),
        }
        if (await self.session.execute(statement, params)).one_or_none() is None:
            await self.session.execute(_INSERT, {"key": key})
            await self.session.execute(statement, params)
