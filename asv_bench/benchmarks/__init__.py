"""asv benchmarks of velocore, each next to its baselines (dict, sqlite3, lmdb)."""
