"""Aggregation strategies: Flower Message-API strategies and fedloom's wrappers."""
