"""Built-in lenses. Each is a package with the same shape: manifest.json, plugin.py (the hooks),
schema.py (GraphQL), jobs.py (job handlers), and nothing else the kernel needs to know about."""
