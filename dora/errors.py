"""User-facing errors: one line saying what is wrong and what is valid, exit code 2."""


class UserError(Exception):
    """Bad input (config, data, model source). The CLI prints ``error: <message>`` and exits 2."""


def one_line(message: str) -> str:
    """Collapse a message to a single line."""
    return " ".join(str(message).split())


def choices(options) -> str:
    return ", ".join(sorted(options))
