"""Project exceptions. Every message names the file, row or step at fault."""


class PipelineError(Exception):
    """Base class: a failure the user can act on (shown without a traceback by the CLI)."""


class ConfigError(PipelineError, ValueError):
    """A config file or value is invalid."""


class DataError(PipelineError, ValueError):
    """An input file, manifest row or label is missing, corrupt or inconsistent."""


class TrainingError(PipelineError, RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message names the step."""
