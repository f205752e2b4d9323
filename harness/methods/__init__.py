"""Methods under evaluation; importing this package registers them."""

from harness.methods import stacked_autoencoder  # noqa: F401
from harness.methods import discrete_sae  # noqa: F401
from harness.methods import sae  # noqa: F401
from harness.methods import icl  # noqa: F401
from harness.methods import atp_star  # noqa: F401
from harness.methods import subnetwork_probing  # noqa: F401
