"""Templates, script and style of the review web UI (package data)."""
