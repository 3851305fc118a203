"""driftrec's mathematics: decay, co-occurrence, factor updates and batch aggregation (no I/O)."""
