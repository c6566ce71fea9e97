"""Datasets in verl's RL parquet schema: DAPO-Math-17k, AIME/AMC, and a local synthetic task."""
