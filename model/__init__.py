"""DESDnet for video anomaly detection: network, losses, erasure, scoring, data, training, evaluation."""

from .network import DESDnet, DESDnetConfig, DESDnetOutput

__all__ = ["DESDnet", "DESDnetConfig", "DESDnetOutput"]
