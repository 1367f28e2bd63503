"""The data contract: Avro schemas in `schemas/avro/` and what derives from them."""
