"""The former name of :mod:`reslab.checks`, for code not yet moved (reslab.experiments)."""

from reslab.checks.document import *  # noqa: F403
from reslab.checks.files import *  # noqa: F403
from reslab.checks.values import *  # noqa: F403
