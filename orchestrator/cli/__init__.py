"""Command groups of the fedmq CLI that need the server side (see fedmq/cli.py)."""
