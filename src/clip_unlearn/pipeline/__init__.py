"""The erasure pipeline without Prefect: params, requests and their S3 log, the MLflow registry,
the steps of one job, the certificate and its signature, the benchmark.

Drivers (flows/ and tasks/ for Prefect, dvc.yaml via `unlearn stage`, the CLI) call into it; it
calls the methods and the core, never a driver.
"""
