"""Make the seed split of the ISBI 2012 training volume as folders of links.

Slices 0, 10 and 20 are the test set, 5, 15 and 25 the validation set, the other 24
slices the training set (the split of the seed suite's ISBI notebook). Each set gets
``image/`` and ``label/`` folders of symbolic links to the PNG slices, so nothing is
copied and `unetrt train` / `unetrt evaluate` read each set as a folder.

Usage (from the repository root)::

    python training/isbi2012_split.py            # data from ../shared/data/isbi2012
    python training/isbi2012_split.py --data DIR --out runs/isbi2012/split
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

TEST = (0, 10, 20)
VALIDATION = (5, 15, 25)
SLICES = 30
ROOT = Path(__file__).resolve().parents[1]


def split(data: Path, out: Path) -> dict[str, list[int]]:
    """Create ``out/{train,val,test}/{image,label}/N.png`` links to ``data``.

    Raises:
        SystemExit: If a slice of the volume is missing.
    """
    sets = {
        "test": list(TEST),
        "val": list(VALIDATION),
        "train": [n for n in range(SLICES) if n not in TEST + VALIDATION],
    }
    for name, slices in sets.items():
        for kind in ("image", "label"):
            folder = out / name / kind
            folder.mkdir(parents=True, exist_ok=True)
            for stale in folder.iterdir():
                stale.unlink()
            for n in slices:
                source = (data / kind / f"{n}.png").resolve()
                if not source.is_file():
                    raise SystemExit(f"missing ISBI 2012 slice: {source}")
                (folder / f"{n}.png").symlink_to(source)
    return sets


def main() -> None:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_data = Path(os.environ.get("UNETRT_DATA", ROOT.parent / "shared" / "data"))
    parser.add_argument("--data", type=Path, default=default_data / "isbi2012")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "isbi2012" / "split")
    args = parser.parse_args()
    for name, slices in split(args.data, args.out).items():
        print(f"{name:<5} {len(slices):>2} slices: {' '.join(map(str, slices))}")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
