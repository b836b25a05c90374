"""``python -m asl.study``."""

from . import console

console()
