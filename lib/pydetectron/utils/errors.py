"""The one exception family for input the user has to fix (a flag, a config value, a dataset, an
image, a checkpoint, an output folder).

Each error is raised where the input is validated, with the file, field, key or flag named and
what was expected. The tools' boundary (``pydetectron.engine.cli.run_tool``) prints it as one line
``<prog>: error: <message>`` and exits 2; any other exception is a bug and keeps its traceback.

Every class also derives from the built-in exception the same check raised before the family
existed (``ValueError``, ``KeyError``, ``OSError``, ``RuntimeError``), so existing ``except``
clauses keep working.
"""


class UserInputError(Exception):
    """Bad input: the message says which input and what was expected."""

    def __str__(self):
        # KeyError-derived subclasses would quote their message; show it as written.
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class CliError(UserInputError, ValueError):
    """A command-line flag that is missing, malformed, out of range or contradicts another."""


class MissingFileError(CliError, FileNotFoundError):
    """A file named by a flag or a config key does not exist."""

    def __str__(self):
        return UserInputError.__str__(self)


class ConfigError(UserInputError):
    """A config key or value (YAML file or ``--set``) that is unknown, mistyped or invalid."""


class DatasetError(UserInputError, ValueError):
    """A dataset (annotation JSON, catalog entry, proposal file) that cannot be used."""


class ImageError(UserInputError, OSError):
    """An image file that is missing, truncated, corrupt or disagrees with its annotation."""

    def __str__(self):
        return UserInputError.__str__(self)


class CheckpointError(UserInputError, RuntimeError):
    """A checkpoint or weights file that cannot be used: unreadable, truncated, of another
    architecture, or of the wrong kind (weights only where a training state is needed)."""


class WeightsMismatchError(CheckpointError, ValueError):
    """A weights file whose tensors do not fit the model (missing blobs, other shapes)."""


class OutputError(UserInputError, OSError):
    """An output folder that cannot be created or written (permissions, full disk)."""

    def __str__(self):
        return UserInputError.__str__(self)


def one_line(message):
    """``message`` on one line: continuation lines joined with '; '."""
    parts = [p.strip() for p in str(message).splitlines()]
    return '; '.join(p for p in parts if p)
