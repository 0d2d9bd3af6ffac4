"""Test harnesses that start real components (sshd, caddy, systemd-nspawn) on loopback."""
