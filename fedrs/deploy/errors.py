"""The errors of a deployment of real Flower processes."""

from __future__ import annotations

from fedrs.errors import FedrsRuntimeError

__all__ = ["DeploymentError"]


class DeploymentError(FedrsRuntimeError):
    """A process of the deployment, or the federated run, failed (the message says which)."""
