"""``python -m jusnap_jupyter install-kernelspec [--user | --sys-prefix | --prefix DIR]``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jusnap_jupyter", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sp = sub.add_parser("install-kernelspec", help='install the "Python 3 (Jusnap)" kernelspec')
    where = sp.add_mutually_exclusive_group()
    where.add_argument(
        "--user", action="store_true", help="into the current user's Jupyter data dir"
    )
    where.add_argument("--sys-prefix", action="store_true", help=f"into {sys.prefix}/share/jupyter")
    where.add_argument("--prefix", metavar="DIR", help="into DIR/share/jupyter")
    args = parser.parse_args(argv)

    from .kernelspec import install

    prefix = sys.prefix if args.sys_prefix else args.prefix
    path = install(user=args.user, prefix=prefix)
    print(f"installed kernelspec jusnap-python3 in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
