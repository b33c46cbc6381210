"""The agent core: events, encoding, backends, the loop, sessions. Never imports app/."""
