"""The Flower ServerApp of fedrs (``fedrs.server.app:app``) and the simulation runner."""
