"""Running Beam locally: the tuned streaming DirectRunner and helpers for pipeline tests."""
