"""The transport contract suite (see conftest.py)."""
