"""One exception type for problems a user can fix: the CLI prints it as one line, exit non-zero."""


class WhaleError(Exception):
    """Bad input, file, device, model or config value: the message is the whole story."""
