"""Reference methods every method is measured against; importing this package registers them."""

from baselines import clustering  # noqa: F401
from baselines import circuits  # noqa: F401
from baselines import reconstruction  # noqa: F401
from baselines import icl  # noqa: F401
