"""Local test cluster and connections to existing Ray clusters."""
