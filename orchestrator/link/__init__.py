"""The orchestrator's side of MQTT: the link (one persistent session), its message seqs, its
signing key, and the one outbound sender that numbers, signs and publishes."""
