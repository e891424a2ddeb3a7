"""Command line: parses options, calls one function, maps the result to an exit code."""
