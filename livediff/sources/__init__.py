"""ZeroMQ receivers and protocol decoders (wire bytes -> SeriesStart, Frame, SeriesEnd), and their inverse:
the encoders and the sender that streams a series as a detector would."""
