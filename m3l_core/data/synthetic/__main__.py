"""``python -m m3l_core.data.synthetic``: write a synthetic dataset in the folder format."""
import sys

from .writer import main

sys.exit(main())
