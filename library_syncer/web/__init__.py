"""Publishing with Caddy, and the human index page of the published library."""
