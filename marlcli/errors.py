"""User-facing errors: the CLI prints them as one line and exits with code 2."""


class MarlError(Exception):
    """Bad input from the user: printed as one line, exit code 2, no traceback."""


class ConfigError(MarlError):
    """An unknown option, a bad value or an incompatible env/algo pair."""


class CheckpointError(MarlError):
    """A missing, truncated or foreign checkpoint file."""


class TrainingError(MarlError):
    """A run that cannot go on, e.g. a NaN loss (training diverged)."""
