"""Built-in tasks, one sub-package per family; importing registers them."""
