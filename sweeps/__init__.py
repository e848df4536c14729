"""YAML sweep specs and their expansion into trials (pure: no I/O beyond reading the YAML)."""
