"""Methods under evaluation; importing this package registers them."""

from methods import stacked_autoencoder  # noqa: F401
from methods import discrete_sae  # noqa: F401
from methods import sae  # noqa: F401
from methods import icl  # noqa: F401
