"""The streaming job: the Beam pipeline, its scoring and learning stages, and Dataflow options."""
