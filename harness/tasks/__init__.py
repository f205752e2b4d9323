"""Built-in tasks, one sub-package per family; importing registers them."""

from harness.tasks import circuits  # noqa: F401
from harness.tasks import clustering  # noqa: F401
from harness.tasks import reconstruction  # noqa: F401
from harness.tasks import icl  # noqa: F401
