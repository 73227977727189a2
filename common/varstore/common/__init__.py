"""What varstore's server and client share: errors, dtypes, the tensor codec, the protocol.

Nothing here imports ``varstore.server`` or the eager client; both import from here.
"""

__version__ = "0.1.0"
