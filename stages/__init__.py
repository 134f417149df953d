"""The six DVC stages of dvc.yaml, one entry point each (`python -m stages.<name>`)."""
