"""Edge agent: the device side of fedmq (imports schemas and the agent deps only)."""
