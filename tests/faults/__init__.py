"""The fault matrix's "dependencies failing under a run": the database, the center, the model repository, storage."""
