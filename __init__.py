"""fedloom: federated-learning simulations with real client processes (Flower + Ray).

The repository root is this package, so ``fedloom.server``, ``fedloom.client``,
``fedloom.strategies``, ... are its subpackages.
"""

__version__ = "0.2.0"
