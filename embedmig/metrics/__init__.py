"""Metrics of a migration: pure kernels (``kernels``) and the report built from them (``report``)."""
