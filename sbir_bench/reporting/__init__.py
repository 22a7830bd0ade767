"""Turning run records into tables, statistics, exports and plots (never touches a model)."""
