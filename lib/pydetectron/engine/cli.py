"""What the command-line tools share: user errors end in one line on stderr and exit status 2.

A bad file, flag, config key, dataset, image, checkpoint or output folder is the user's to fix,
and its message says how; a traceback would only hide it. Such errors are the
``pydetectron.utils.errors.UserInputError`` family (the config, dataset, checkpoint and pickle
errors of the package are members), plus ``FileNotFoundError`` (a path the user named does not
exist). Argument-parsing errors go the same way: ``ArgumentParser`` raises ``CliError`` instead
of printing the usage and exiting. Anything else is a bug and keeps its traceback.

Every tool's ``__main__`` is ``sys.exit(run_tool(main, prog='<tool>.py'))``.
"""
import argparse
import os
import sys

from pydetectron.utils.errors import (CliError, MissingFileError, OutputError, UserInputError,
                                      one_line)

USER_ERROR_EXIT_CODE = 2


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors raise ``CliError`` (one line through
    ``run_tool``, with a pointer to ``--help``) instead of printing the usage."""

    def error(self, message):
        raise CliError('{} (see {} --help)'.format(message, self.prog))


def user_error_types():
    """The exception types that mean "bad input"."""
    return (UserInputError, FileNotFoundError)


def format_user_error(e):
    """The one-line message of a user error. One re-raised from a DataLoader worker carries the
    worker's traceback in its message: only its last line, the error itself, is kept."""
    msg = str(e)
    if 'Original Traceback' in msg:
        last = [l for l in msg.splitlines() if l.strip()][-1]
        msg = last.split(': ', 1)[1] if ': ' in last else last
    return one_line(msg) or type(e).__name__


def run_tool(main, argv=None, prog=None):
    """Run ``main(argv)``; a user error prints ``<prog>: error: <message>`` and returns 2."""
    try:
        return main(argv)
    except user_error_types() as e:
        print('{}error: {}'.format(prog + ': ' if prog else '', format_user_error(e)),
              file=sys.stderr, flush=True)
        return USER_ERROR_EXIT_CODE


def positive(type_, flag=None):
    """An argparse ``type=`` accepting values > 0 of ``type_``, e.g. ``positive(int)``."""
    def parse(text):
        try:
            value = type_(text)
        except ValueError:
            raise argparse.ArgumentTypeError('expected a {} > 0, got {!r}'.format(
                type_.__name__, text))
        if not value > 0:
            raise argparse.ArgumentTypeError('expected a {} > 0, got {!r}'.format(
                type_.__name__, text))
        return value
    parse.__name__ = '{}>0'.format(type_.__name__)
    return parse


def non_negative_int(text):
    """An argparse ``type=`` accepting integers >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError('expected an integer >= 0, got {!r}'.format(text))
    if value < 0:
        raise argparse.ArgumentTypeError('expected an integer >= 0, got {!r}'.format(text))
    return value


def check_set_pairs(set_cfgs, flag='--set'):
    """``--set KEY VALUE [KEY VALUE ...]``: an even number of items."""
    if set_cfgs and len(set_cfgs) % 2:
        raise CliError('{} takes KEY VALUE pairs; got an odd number of items ({}): {}'.format(
            flag, len(set_cfgs), ' '.join(str(s) for s in set_cfgs)))


def check_input_file(path, flag):
    """``path`` (given with ``flag``) exists, is a file and can be read."""
    if not path:
        return
    if not os.path.exists(path):
        raise MissingFileError('{}: {} not found'.format(flag, path))
    if not os.path.isfile(path):
        raise CliError('{}: {} is not a file'.format(flag, path))
    if not os.access(path, os.R_OK):
        raise CliError('{}: {} is not readable (permissions)'.format(flag, path))
    if os.path.getsize(path) == 0:
        raise CliError('{}: {} is empty'.format(flag, path))


def check_output_dir(path, flag='--output_dir'):
    """``path`` exists or can be created, and a file can be written in it (before any heavy
    work, so a typo costs seconds). Raises ``OutputError`` naming the folder."""
    path = os.path.abspath(path)
    probe_dir = path
    while not os.path.exists(probe_dir):
        parent = os.path.dirname(probe_dir)
        if parent == probe_dir:
            break
        probe_dir = parent
    if not os.path.isdir(probe_dir):
        raise OutputError('{}: cannot create {}: {} is not a folder'.format(flag, path, probe_dir))
    if not os.access(probe_dir, os.W_OK | os.X_OK):
        raise OutputError('{}: cannot write to {}: {} is not writable'.format(
            flag, path, probe_dir))
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, '.write_test.{}'.format(os.getpid()))
        with open(probe, 'wb') as f:
            f.write(b'0')
        os.remove(probe)
    except OSError as e:
        raise OutputError('{}: cannot write to {}: {}'.format(
            flag, path, e.strerror or e)) from e
    return path
