"""`popsync serve`: the verification service (the read path), on HTTP."""
