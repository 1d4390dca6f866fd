"""Pieces every service shares: config, database, embedded server, web base classes."""
