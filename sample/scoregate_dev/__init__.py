"""Development-only sample servers that stand in for upstream sources and the model."""
