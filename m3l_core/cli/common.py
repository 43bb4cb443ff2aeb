"""What the training-side CLIs share: exit codes, logging, the thread setting."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable

from m3l_core.threads import configure_threads, resolve_threads

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

log = logging.getLogger(__name__)


def add_threads_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=0, metavar="N",
                        help="CPU threads per process for torch/OpenCV (0 = auto: half the usable cores, "
                             "divided among torchrun's local processes); DataLoader workers use 1 each")


def setup_threads(num_threads: int) -> int:
    """Apply ``--threads`` (``0`` = auto, shared among the processes torchrun starts on this machine)."""
    if num_threads == 0:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        num_threads = max(1, resolve_threads(0) // local)
    n = configure_threads(num_threads)
    log.info("using %d CPU thread(s) per process", n)
    return n


def setup_logging(*, is_main: bool, fmt: str = "%(asctime)s %(levelname)s %(name)s: %(message)s") -> None:
    """INFO on the main rank, warnings only on the others (also when logging was configured before)."""
    level = logging.INFO if is_main else logging.WARNING
    logging.basicConfig(level=level, format=fmt)
    logging.getLogger().setLevel(level)


def run_guarded(body: Callable[[], int], *, failure: tuple[type[BaseException], ...],
                usage: tuple[type[BaseException], ...] = (), interrupted: str | None = "interrupted") -> int:
    """Run a CLI body: ``usage`` errors exit 2, ``failure`` errors 1 (one ``error:`` line), Ctrl-C 130.

    The messages of those errors already name the file or the argument; the traceback goes to
    the debug log only. ``interrupted`` is the line Ctrl-C prints (``None``: none). The process
    group of a torchrun launch is always shut down (torch is not imported for it: the CLIs
    without torch stay without).
    """
    try:
        return body()
    except usage as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except failure as e:
        log.debug("failed", exc_info=True)
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        if interrupted is not None:
            print(interrupted, file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if "torch.distributed" in sys.modules:  # no group can exist without it
            from m3l_core import distributed as dist_utils

            dist_utils.cleanup()
