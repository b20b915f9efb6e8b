"""The Python client: `from service.client import VaeClient` (needs grpcio and numpy only)."""

from service.client.vae_client import VaeClient, channel_credentials

__all__ = ["VaeClient", "channel_credentials"]
