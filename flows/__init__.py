"""Prefect flows that orchestrate the DVC pipeline (pipeline.py) and method sweeps (sweep.py)."""
