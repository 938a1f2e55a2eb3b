"""The engine's Alembic migrations (installed as `engine.migrations`)."""
