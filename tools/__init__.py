"""Model-facing tools: each a function with a JSON schema, confined to the repository."""
