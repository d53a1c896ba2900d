"""priv_network: a private, federated media network for small groups."""

__version__ = "0.1.0"
