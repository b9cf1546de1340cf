"""Test support: sample data, browser checks, a cockpit API server and test-only readers (never imported by `etl`)."""
