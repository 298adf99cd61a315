"""Persistence: the store (SQLite or PostgreSQL), its numbered migrations and table definitions."""
