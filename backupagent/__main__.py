"""Allows ``python -m backupagent`` where the console script is not on PATH."""

from backupagent.cli.main import main

if __name__ == "__main__":
    main()
