"""Errors a user can act on. The CLI prints them as one message and exits non-zero, no traceback."""


class PipelineError(Exception):
    """A problem with input, config or environment that the user must fix; the message says how."""


class ConfigError(PipelineError):
    """A config key or value is wrong."""


class DataError(PipelineError):
    """An input file is malformed; the message names the file, the row or key, and the problem."""
