"""Install the ``tensorrt-stubs`` type stubs into a folder for mypy, repaired so they parse.

Usage: python .ci/tensorrt_stubs.py DIR   (then: MYPYPATH=DIR mypy)

Why a folder and not the environment: the stubs package depends on the ``tensorrt``
wheels, which download only from NVIDIA's index (so ``--no-deps``), and it ships its
``.pyi`` files as a plain package without ``py.typed``, which mypy skips in site-packages
but reads from ``MYPYPATH``. Why repaired: every published version has a few generated
signatures that are not Python (a parameter named ``in``; a parameter without a default
after ones with defaults). Those methods (plugin and layer-building calls unetrt does not
use) get ``(self, *args: Any, **kwargs: Any)`` with their return type kept; everything
else is checked as published.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

VERSION = "10.13.0.35.1"
SIGNATURE = re.compile(r"^(?P<head>\s*def \w+)\((?P<params>.*)\)(?P<tail>\s*(->.*)?:.*)$")


def repair(path: Path) -> int:
    """Rewrite each signature of ``path`` that does not parse; returns how many."""
    lines = path.read_text().split("\n")
    fixed = 0
    while True:
        try:
            ast.parse("\n".join(lines), filename=str(path))
            break
        except SyntaxError as exc:
            number = (exc.lineno or 1) - 1
            match = SIGNATURE.match(lines[number])
            if match is None or fixed > 200:
                raise SystemExit(f"{path}:{number + 1}: cannot repair: {exc.msg}") from exc
            lines[number] = f"{match['head']}(self, *args: Any, **kwargs: Any){match['tail']}"
            fixed += 1
    if fixed:  # after a __future__ import, which must come first
        first = next((i + 1 for i, ln in enumerate(lines) if ln.startswith("from __future__")), 0)
        lines.insert(first, "from typing import Any")
        path.write_text("\n".join(lines))
    return fixed


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__.strip().splitlines()[2])
    target = Path(sys.argv[1])
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--upgrade",
         "--target", str(target), f"tensorrt-stubs=={VERSION}"],
        check=True,
    )  # fmt: skip
    for stub in sorted(target.glob("tensorrt*/**/*.pyi")):
        if count := repair(stub):
            print(f"{stub}: {count} signatures repaired")


if __name__ == "__main__":
    main()
