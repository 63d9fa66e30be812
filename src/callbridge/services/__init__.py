"""Use cases: they depend on the domain and its ports only."""
