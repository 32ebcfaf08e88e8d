"""Model versions: the version head and its waiters, the aggregator that makes versions,
publication, the screening guard, rollback and export."""
