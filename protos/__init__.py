"""Protobuf/gRPC service definitions (``*.proto``) and their committed generated code."""
