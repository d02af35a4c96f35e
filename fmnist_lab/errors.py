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
