"""The real-time anomaly detection service: sources, ring buffers, inference worker, API, metrics."""
