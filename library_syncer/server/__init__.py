"""The server role: the dedicated, locked-down sshd that exports the library."""
