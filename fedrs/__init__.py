"""fedrs: federated learned compression and hashing of remote-sensing image archives."""

__version__ = "0.1.0"
