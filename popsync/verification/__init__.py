"""The read path: partners verify and look up citizens in the central store without the
register leaking (`popsync serve`, served by `popsync.services.verification`).

- `models`: the HTTP contract (requests, answers), one place.
- `comparison`: what `match` means for each attribute, and what a partner may learn.
- `partners`: partners, their policies and API keys (hashes only).
- `limits`: per-partner rate limits (token buckets) and daily quotas (leases).
- `audit`: the append-only access audit, with a keyed hash of each PIN.
"""
