"""Benchmarks of AttemptAwareServer against upstream's AgentLightningServer: ``python -m benchmarks``."""
