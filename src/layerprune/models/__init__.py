"""Model sources (hub, local, packaged GGUF), turned into plain local checkpoints, and loading them."""
