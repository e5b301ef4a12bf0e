"""The Flower ClientApp of fedrs (``fedrs.clients.app:app``)."""
