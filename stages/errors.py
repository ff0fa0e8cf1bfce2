"""The root of every error datagen reports to its user as one line (``stages`` is the bottom layer, so
both layers can derive from it). The CLI maps it to an exit status; anything else is a bug."""


class DatagenError(Exception):
    """A problem with the user's input, files or environment; the message is one line for the user."""

    exit_code = 2


class DataError(DatagenError, ValueError):
    """Input data that cannot be used: a folder, image, mask, shard or JSON file; named in the message."""


class WriteError(DatagenError):
    """An output file or folder that cannot be written (full disk, read-only file system, no permission);
    named in the message. What was written before it stays whole: writes are atomic."""


class ConfigError(DatagenError, ValueError):
    """A config, flag or output folder that cannot be used; its message is one line for the user."""
