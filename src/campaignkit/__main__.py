"""``python -m campaignkit``: the same command line as ``campaignkit``."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="campaignkit")
