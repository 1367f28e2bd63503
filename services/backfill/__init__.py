"""`popsync backfill`: registry archives into the central store by the stream's rules
(`services.backfill.job`)."""
