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


class OutputError(RlrError, OSError):
    """A file could not be written (disk full, no permission, a read-only place).

    Also an OSError with the cause's errno and strerror, so code that handles a failed write by
    catching OSError (and words its own message from `strerror`) keeps working.
    """

    def __init__(self, message: str, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror or one_line(cause))
        self.message = message

    def __str__(self) -> str:
        return self.message


def one_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (at most `limit` characters), or its type's name when it has none.

    Third-party errors (torch, the ONNX exporter) carry pages of context; a user acts on the first line.
    """
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
