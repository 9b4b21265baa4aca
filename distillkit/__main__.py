"""``python -m distillkit``."""

from distillkit.cli import main

main()
