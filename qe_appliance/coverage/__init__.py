"""Coverage reports: parsers for five formats into one model, and the gap analysis built on it."""
