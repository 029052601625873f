"""The one error type for bad user input (CLI flags, node inputs, checkpoint files, dataset folders).

It subclasses ValueError so callers that only know the standard library still catch it.
Messages are one line and name the offending value and what is allowed.
"""


class NitroGenInputError(ValueError):
    pass
