"""Exceptions every layer raises and the plugin and CLI turn into skips or one-line messages.

They live below models/, methods/ and tasks/ so that any of them can raise one without importing
another: a model runtime that cannot run on a device raises MethodUnsupported without models/
depending on methods/ (tests/test_architecture.py holds that line).
"""


class Unavailable(RuntimeError):
    """Something a case needs cannot be had here (offline, not installed): the case skips with the
    message as its reason."""


class ModelUnavailable(Unavailable):
    """The model's weights (or its tokenizer) cannot be had here; the message says what is missing."""


class TaskDataUnavailable(Unavailable):
    """A task's dataset cannot be had here; the message says what is missing."""


class MethodUnsupported(RuntimeError):
    """The method cannot run here (missing package or device, unsupported architecture): a skip reason."""


class ConfigError(ValueError):
    """A project's compresslab configuration is invalid. The message is one line that names the file,
    the key and the valid values; pytest turns it into a usage error (exit 4), the CLI into exit 2."""
