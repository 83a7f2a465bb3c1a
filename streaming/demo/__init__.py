"""`streamscore up`: the local demo stack and its summary."""

PROG = "streamscore up"
