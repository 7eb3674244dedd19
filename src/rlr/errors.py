"""The library's error types: each carries one line a user can act on."""


class RlrError(Exception):
    """Base class: the CLI prints the message as one line and exits non-zero."""


class DataError(RlrError):
    """A dataset, image or mask problem; the message starts with the offending path."""


class ConfigError(RlrError):
    """A configuration value is missing, unknown or inconsistent."""


class WeightsError(RlrError):
    """Backbone weights cannot be found or do not fit the model."""


class CheckpointError(RlrError):
    """A checkpoint is missing, unsafe, corrupt or belongs to another model."""
