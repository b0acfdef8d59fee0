"""What several processes share: the trace format, the run directory, the
bus, the data channel client and the flight-recorder policy."""
