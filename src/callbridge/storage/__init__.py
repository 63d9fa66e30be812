"""Persistence: SQLAlchemy models, repositories (flush, never commit), the durable job queue."""
