"""The trust boundary: who published an event comes from a verified signature, and what
it may change from that identity (`identity`: the publisher directory's model; `signing`:
the signed bytes, signing and verifying; `verification`: the validator's check)."""
