"""``python -m guestkit_worker``."""

from .cli import entry_point

if __name__ == "__main__":
    entry_point()
