"""Errors the CLI turns into a one-line `error: ...` message.

InputError (exit 2) means the user gave something bad: a path, a plan, a
corrupt checkpoint. BuildError (exit 1) means a valid request failed at run time.
"""


class DusError(Exception):
    exit_code = 1


class InputError(DusError):
    exit_code = 2


class BuildError(DusError):
    exit_code = 1
