"""Operations on whole checkpoints, behind the CLI: list a directory, verify, copy."""
