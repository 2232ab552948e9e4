"""Test generation for Python: `ast` analysis of a module, test cases derived from it, a rendered pytest or
unittest module, and its verification by a real pytest run."""
