"""streamscore: protos/streamscore."""
