"""The synchronizer worker."""
