"""The front-end: one command table (shell.commands) behind the argv CLI, the REPL and scripts."""
