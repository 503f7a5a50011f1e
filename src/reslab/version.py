"""The one place reslab's version lives: pyproject.toml, results.json, run folders and the
report read it from here (a leaf module, so nothing imports the package root for it)."""

__version__ = "0.1.0"
