"""Durable state: the schema, the engine, and Alembic migrations."""
