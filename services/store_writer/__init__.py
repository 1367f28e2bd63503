"""The store_writer worker."""
