"""Where features come from: the online store, source APIs, and the assembler that
chooses between them per feature."""
