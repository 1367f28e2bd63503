"""popsync: registry change events to the central population store."""

__version__ = "0.1.0"
