"""Kiln: a self-hosted model compiler speaking the SageMaker Neo compilation-job API."""
__version__ = "0.1.0"
