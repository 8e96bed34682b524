"""Errors the command-line tools report as one line (`prog: error: ...`, exit code 2), without a traceback."""


class UserError(ValueError):
    """A bad argument, input file or output folder: the user can fix it.

    A ValueError, so Python code that calls a library function (`train()`,
    `evaluate.run`, `run_export`) can catch it and goes on running; `str(error)`
    is the message and `code` the exit status a command line ends with. Only the
    `main()` of each CLI turns it into `prog: error: message` and exit code 2
    (see `run_cli`).
    """

    def __init__(self, message):
        super().__init__(message)
        self.code = 2

    def __str__(self):
        return str(self.args[0])


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) stopped a command; `str(error)` says where and what re-running does.

    A KeyboardInterrupt, so a caller's `except KeyboardInterrupt` still sees it;
    `code` is the exit status the command line ends with (130, or 143 for SIGTERM).
    """

    def __init__(self, message, code=130):
        super().__init__(message)
        self.code = code

    def __str__(self):
        return str(self.args[0])


class ModelFileError(ValueError):
    """A model file that exists but cannot be used (empty, truncated, not a Keras archive, wrong kind of model)."""


def run_cli(prog, function, *args):
    """Calls `function(*args)`; user errors become `prog: error: ...` on stderr and exit code 2.

    Ctrl-C is one line too, never a traceback: the command's own `Interrupted` message
    (exit 130, 143 for SIGTERM), else `prog: interrupted (Ctrl-C).` (exit 130).
    """
    import sys

    prefix = f"{prog}: "
    try:
        return function(*args)
    except (UserError, ModelFileError) as error:
        message = str(error).strip()
        if message.startswith(prefix):
            message = message[len(prefix):]
        print(f"{prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    except Interrupted as error:
        message = str(error).strip()
        print(message if message.startswith(prefix) else prefix + message, file=sys.stderr, flush=True)
        raise SystemExit(error.code) from None
    except KeyboardInterrupt:
        print(f"{prog}: interrupted (Ctrl-C).", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
