"""The whole host across roles: check, status, the demo, the Docker settings import."""
