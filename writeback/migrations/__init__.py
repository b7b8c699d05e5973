"""The schema migrations, as ``NNN_name.sql`` files applied in name order."""
