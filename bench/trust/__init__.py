"""The cost of the trust boundary: verifying each event's signature in the validator."""
