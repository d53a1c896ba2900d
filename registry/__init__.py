"""Content manager and local registry: what every node (this one included) offers, and search."""
