"""Where features come from.

The online store, the source APIs, and the assembler that chooses between them per
feature.
"""
