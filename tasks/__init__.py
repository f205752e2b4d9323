"""Built-in tasks, one sub-package per family; importing registers them."""

from tasks import circuits  # noqa: F401
from tasks import clustering  # noqa: F401
from tasks import reconstruction  # noqa: F401
from tasks import icl  # noqa: F401
