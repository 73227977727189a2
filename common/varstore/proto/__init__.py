"""Generated protobuf and gRPC code for varstore's wire protocol (``scripts/gen_protos.py``)."""
