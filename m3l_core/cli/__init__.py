"""Command-line entry points of the training side (``main(args=None) -> int``).

* :mod:`m3l_core.cli.train` (``m3l-train``, ``training/train_m3l.py``)
* :mod:`m3l_core.cli.evaluate` (``m3l-evaluate``, ``training/evaluate.py``)
* ``python -m m3l_core.data.check`` (up-front dataset check)

Exit codes: 0 success, 1 runtime failure (bad data, failed step), 2 usage error, 130 Ctrl-C.
"""
