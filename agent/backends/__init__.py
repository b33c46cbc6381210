"""Model backends behind one protocol (base.Backend)."""
