"""Orchestrator: the server side of fedmq (imports schemas and the server deps)."""
