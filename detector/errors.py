"""The exception types for problems a user can fix: the CLI prints them as one line, and the
exit status says which kind (sysexits.h), so systemd's `RestartPreventExitStatus=` can stop a
bad configuration from restarting forever while a runtime failure is still retried."""

EX_RUNTIME = 2  # a file, device, endpoint or disk problem: retrying may help
EX_USAGE = 64  # a bad command line (sysexits.h EX_USAGE)
EX_CONFIG = 78  # a bad config file, config value, model or model card (EX_CONFIG)


class WhaleError(Exception):
    """Bad input, file, device, model or config value: the message is the whole story."""

    exit_status = EX_RUNTIME


class UsageError(WhaleError):
    """The command line is wrong: an option's value, or options that do not go together."""

    exit_status = EX_USAGE


class ConfigError(WhaleError):
    """The configuration is wrong (config file, model, its card): restarting cannot fix it."""

    exit_status = EX_CONFIG
