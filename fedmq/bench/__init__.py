"""Benchmarks that run real agents against a real orchestrator (``fedmq bench wire``,
``async-vs-sync``, ``fleet``); registered by module path in ``orchestrator.cli.bench``."""
