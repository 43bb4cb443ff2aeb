"""Evaluate a checkpoint (MM-Robust): ``python training/evaluate.py --help`` (the same as ``m3l-evaluate``).

The command lives in :mod:`m3l_core.cli.evaluate`; this file is the entry point at the documented path.
"""
import sys

from m3l_core.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
