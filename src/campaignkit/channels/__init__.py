"""Built-in channel plugins."""
