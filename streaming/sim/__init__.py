"""The transaction simulator (the generative process of ../shared/specs/SIMULATOR.md)."""
