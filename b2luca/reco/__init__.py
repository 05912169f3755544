"""Small vectorised reconstruction library for the toy detector (shared geometry, raw reader, fit)."""
