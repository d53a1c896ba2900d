"""The Content Management API (CMA): the only code that reads or writes the content store."""
