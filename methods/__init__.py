"""Methods under evaluation; importing this package registers them."""

from methods import stacked_autoencoder  # noqa: F401
