"""Edges of the system: the broker, the store, the embedded services' clients."""
