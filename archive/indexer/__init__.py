"""The indexer role: queue -> catalog + search index, ack after both committed."""
