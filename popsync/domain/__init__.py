"""Pure domain rules: provinces, personal identification numbers, names."""
