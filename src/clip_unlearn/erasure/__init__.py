"""The erasure pipeline's core, free of Prefect: requests and their S3 event log, leases,
verification, the MLflow registry, and the steps of one erasure job (`steps.py`)."""
