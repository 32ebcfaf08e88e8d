"""Secure buckets on the orchestrator's side (see docs/secagg.md): the per-bucket state
machine (:mod:`.bucket`), its durable form in the store, and the coordinator loop that forms
buckets, relays their stages, unmasks their sums and hands each finished one to FedBuff."""
