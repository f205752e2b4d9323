"""Reference methods every method is measured against; importing this package registers them."""

from harness.baselines import clustering  # noqa: F401
from harness.baselines import circuits  # noqa: F401
from harness.baselines import circuit_edges  # noqa: F401
from harness.baselines import reconstruction  # noqa: F401
from harness.baselines import random_sae  # noqa: F401
from harness.baselines import icl  # noqa: F401
