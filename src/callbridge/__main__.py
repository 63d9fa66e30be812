"""``python -m callbridge``: the same as the ``callbridge`` command."""

from callbridge.cli import main

if __name__ == "__main__":
    main()
