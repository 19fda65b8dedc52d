"""The two exceptions livediff defines; everything else raises ValueError/TypeError."""


class ConfigError(ValueError):
    """The configuration is invalid; the message lists every problem, one per line."""


class DecodeError(ValueError):
    """A received message cannot be decoded; the message is one line saying why."""
