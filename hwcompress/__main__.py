"""``python -m hwcompress``: the command line, for installs without the console script on PATH."""

from hwcompress.cli import main

main()
