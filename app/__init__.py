"""Command-line and terminal faces of v4coder."""
