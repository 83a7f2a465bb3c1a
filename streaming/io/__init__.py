"""Event contract, the one parser, datasets on disk, and Pub/Sub publishing/subscribing."""
