"""Update ingestion: the pure pipeline of checks, the decode worker pool, the intake loops
(decode, commit, ack), and the buffer's storage codec and in-memory cache."""
