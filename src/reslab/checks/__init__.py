"""Checks: the one validation mechanism of reslab, for flags, config files, run folders and
results.json alike.

* :mod:`~reslab.checks.values`: the documented bounds, the type of a value
  (:func:`conform`, :class:`Bounds`, :func:`is_number`), and the one way to echo user text
  (:func:`shown`).
* :mod:`~reslab.checks.files`: an input path, a config file's bounded text and its parse.
* :mod:`~reslab.checks.budget`: what an input will cost (memory, disk) against what the
  machine has, estimated before allocating.
* :mod:`~reslab.checks.document`: the declared schema of a JSON file or section
  (:class:`Object`, :class:`ListOf`, ...), which fails with one :class:`Invalid` line.
"""

from reslab.checks import budget, document, files, values
from reslab.checks.budget import *  # noqa: F403
from reslab.checks.document import *  # noqa: F403
from reslab.checks.files import *  # noqa: F403
from reslab.checks.values import *  # noqa: F403

__all__: list[str] = []  # extended, not built, so that mypy sees the names
__all__ += budget.__all__
__all__ += document.__all__
__all__ += files.__all__
__all__ += values.__all__
