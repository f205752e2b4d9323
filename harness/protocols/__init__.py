"""The small protocol each task family speaks with its methods (DESIGN.md section 1)."""
