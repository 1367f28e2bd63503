"""The validator worker."""
