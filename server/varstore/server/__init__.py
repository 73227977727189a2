"""The varstore server: ``create_server(config)`` builds it, ``varstore serve`` runs it."""

from varstore.server.app import ServerConfig, create_server

__all__ = ["ServerConfig", "create_server"]
