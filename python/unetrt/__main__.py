"""The ``unetrt`` command (console script) and ``python -m unetrt``.

The command line's own modules (NumPy, ONNX Runtime, SciPy) are imported inside
`run`, so Ctrl-C during start-up ends as cleanly as Ctrl-C during work: one line and
exit code 130, no traceback.
"""

import sys


def run() -> None:
    """Import and run the command line; exits with its code."""
    try:
        from .cli import main

        code = main()
    except KeyboardInterrupt:  # before main() could catch it: still starting up
        print("unetrt: interrupted; no output was written", file=sys.stderr)
        code = 130  # as cli.EXIT_INTERRUPTED (not importable yet)
    sys.exit(code)


if __name__ == "__main__":
    run()
