"""mpiland: distributed loss-landscape evaluation for PyTorch models."""

__version__ = "0.1.0"
