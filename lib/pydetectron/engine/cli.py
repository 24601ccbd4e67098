"""What the command-line tools share: user errors end in one line on stderr and exit status 2.

A bad file, flag, config key, dataset or part name is the user's to fix, and its message says how;
a traceback would only hide it. Anything else is a bug and keeps its traceback.
"""
import sys


def user_error_types():
    """The exception types that mean "bad input" (imported lazily: the tools parse flags first)."""
    from pydetectron.core.config import ConfigKeyError, ConfigTypeError, ConfigValueError
    from pydetectron.datasets.dataset_catalog import UnknownDatasetError
    from pydetectron.engine.checkpoint import CheckpointError
    from pydetectron.modeling.registry import UnknownFunctionError
    from pydetectron.utils.io import UnsafePickleError
    return (FileNotFoundError, CheckpointError, ConfigKeyError, ConfigTypeError, ConfigValueError,
            UnknownDatasetError, UnknownFunctionError, UnsafePickleError)


def run_tool(main, argv=None, prog=None):
    """Run ``main(argv)``; a user error prints ``<prog>: error: <message>`` and returns 2."""
    errors = user_error_types()
    try:
        return main(argv)
    except errors as e:
        # KeyError's str() quotes its message; show the message itself
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print('{}error: {}'.format(prog + ': ' if prog else '', msg), file=sys.stderr)
        return 2
