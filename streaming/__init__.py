"""Streaming side of streamscore: the event contract, the simulator, Pub/Sub I/O,
the pure feature code and the Beam jobs that run it."""
