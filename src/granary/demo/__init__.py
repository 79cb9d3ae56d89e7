"""The one-command demo: a synthetic corpus and the steps `granary demo` runs over it."""
