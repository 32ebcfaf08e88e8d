"""Prometheus metrics of the service (:mod:`.prometheus`) and the counters that feed them
(:mod:`.counters`)."""
