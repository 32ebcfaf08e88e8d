"""Helpers shared by the test suite: import them by name (``from tests.support.x import y``);
fixtures stay in the conftest files, which import from here."""
