"""Spiderpool-compatible IPAM: pool model and admission, the pure allocator, selection, GC, the stores."""
