"""Constants of varstore's wire protocol that the server and the client must agree on."""

from __future__ import annotations

# The largest gRPC message either side sends or accepts. Payloads above STREAM_THRESHOLD
# (varstore.common.codec) travel as chunked RunStream calls, so no message comes near this.
MAX_MESSAGE_BYTES = 64 << 20

# Ops that name a variable or a constant without changing anything on the server. The server
# takes no undo copy for them; the client may repeat a request made only of them after
# UNAVAILABLE.
READ_ONLY_OPS = frozenset({"const", "read", "read_if_initialized", "ref", "gather",
                           "partition_gather", "is_initialized"})

# The first element of a sync_accumulate result: what became of the replica's gradients.
PENDING, APPLIED, STALE = 0, 1, -1

# gRPC metadata a cluster client sends to every shard: its requests are routed by shard 0's
# placement table. A shard of a cluster of several creates no variable for a request without
# it (a client that does not know the cluster would create a second variable of a name
# another shard holds).
ROUTED_METADATA = ("x-varstore-routed", "1")

# In the AbortedError of a shard refusing to create a variable that shard 0's placement table
# does not place on it (the table restarted, or placed the name elsewhere, since the client
# looked it up): the client forgets where it thought the variable was and looks it up again.
PLACEMENT_REFUSED = "is not placed on this shard by shard 0's placement table"
