"""What the CLI does beyond save and load: list a directory, verify, copy, measure a store."""
