"""``python -m memchat``: the command line (same as the ``memchat`` script)."""

from memchat.cli import main

if __name__ == "__main__":
    main()
