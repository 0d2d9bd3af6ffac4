"""The command line: argparse and one handler module per command group; no logic."""
