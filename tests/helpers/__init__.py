"""Helpers shared by the tests: tiny models, adapters and archives, servers in threads."""
