"""Train M3L or a baseline: ``python training/train_m3l.py --help`` (the same as ``m3l-train``).

The command lives in :mod:`m3l_core.cli.train`; this file is the entry point at the documented path.
"""
import sys

from m3l_core.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
