"""First-party distillkit plugins: the five techniques of AST (arXiv 2310.10541)."""
