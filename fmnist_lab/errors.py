"""The one exception type for mistakes a user can fix, and how entry points end on errors."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # the shell's code for a process ended by SIGINT


class UserError(Exception):
    """Bad input from the user: printed as one sentence, exit status 2, no traceback."""


def exit_cleanly(main: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a `UserError` into one line on stderr and exit 2, and Ctrl-C into exit 130."""

    @wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(EXIT_INTERRUPTED)

    return wrapper


def hydra_message(err: Exception) -> str:
    """A Hydra composition error in one line: its first line, plus the fix or the choices
    that Hydra lists under it (its search path is left out)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [repr(err)]
    first, rest = lines[0], lines[1:]
    if rest and rest[0].startswith("To append"):
        return f"{first} ({rest[0][0].lower()}{rest[0][1:]})"
    if rest and rest[0].startswith("Available options"):
        options = []
        for line in rest[1:]:
            if line.startswith("Config search path"):
                break
            options.append(line)
        return f"{first}; available: {', '.join(options)}"
    return first
