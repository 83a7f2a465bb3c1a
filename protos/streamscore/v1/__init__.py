"""streamscore: protos/streamscore/v1."""
