"""The versioned adapter registry and the promotion decision."""
