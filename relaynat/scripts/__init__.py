"""
The C{relaynat} command's subcommands, one module each; L{relaynat.cli}
parses the command line and runs them.
"""
