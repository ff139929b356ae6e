"""Task-specific steps the notebooks call (one module per kind of competition)."""
