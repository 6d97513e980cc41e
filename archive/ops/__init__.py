"""Operations: verify (and later reindex, replay of dead letters)."""
