"""``python -m guestkit_worker``."""

from .cli.main import entry_point

if __name__ == "__main__":
    entry_point()
