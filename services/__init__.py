"""Deployable workers, one package each; run with `popsync worker NAME`."""
