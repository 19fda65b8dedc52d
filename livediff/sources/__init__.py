"""ZeroMQ receivers and protocol decoders: wire bytes -> SeriesStart, Frame, SeriesEnd."""
