"""The base layer: errors, settings, paths, logging, processes, files, templates."""
