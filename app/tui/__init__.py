"""The interactive terminal UI (Textual). ``CoderApp`` is the app; widgets live one per module."""
