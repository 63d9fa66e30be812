"""The generic repository every table's repository starts from."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from callbridge.storage.models import Base

M = TypeVar("M", bound=Base)


class Repository(Generic[M]):
    """Basic reads and writes of one model; subclasses add the table's own queries."""

    model: type[M]

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``: for the few statements that differ."""
        return self.session.get_bind().dialect.name

    def select(self) -> Select[M]:
        """A SELECT of this model."""
        return select(self.model)

    async def get(self, id_: int) -> M | None:
        """The row with this primary key, or None."""
        return await self.session.get(self.model, id_)

    async def add(self, obj: M, *, flush: bool = True) -> M:
        """Stage a new row, flushing so that its id is known."""
        self.session.add(obj)
        if flush:
            await self.session.flush()
        return obj

    async def one_or_none(self, statement: Select[M]) -> M | None:
        """The single row a statement finds, or None."""
        result = await self.session.execute(statement)
        return result.scalar_one_or_none()

    async def all(self, statement: Select[M]) -> Sequence[M]:
        """Every row a statement finds."""
        result = await self.session.execute(statement)
        return result.scalars().all()

    async def count(self, *where: ColumnElement[bool]) -> int:
        """How many rows match."""
        statement = select(func.count()).select_from(self.model).where(*where)
        return int((await self.session.execute(statement)).scalar_one())

    async def update(self, obj: M, **values: Any) -> M:
        """Set attributes and flush."""
        for key, value in values.items():
            setattr(obj, key, value)
        await self.session.flush()
        return obj
